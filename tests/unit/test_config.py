"""Training configs: YAML sections, dotted overrides and clear errors."""

import pytest

from tandemrec.train.config import PipelineConfig, apply_overrides, load_config

pytestmark = pytest.mark.unit


def test_defaults_without_file():
    cfg = load_config()
    assert isinstance(cfg, PipelineConfig)
    assert cfg.teacher.max_len == 200 and cfg.compress.param_ratio == 0.5


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dataset: ml-1m\nteacher:\n  d_model: 96\n  lr: 0.001\n")
    cfg = load_config(path, ["teacher.lr=0.003", "eval.ks=[5, 10]", "student.max_epochs=2"])
    assert cfg.dataset == "ml-1m"
    assert cfg.teacher.d_model == 96
    assert cfg.teacher.lr == pytest.approx(0.003)
    assert cfg.eval.ks == (5, 10)
    assert cfg.student.max_epochs == 2


def test_unknown_key_names_the_section(tmp_path):
    with pytest.raises(ValueError, match=r"config\.teacher: unknown key 'dmodel'"):
        load_config(None, ["teacher.dmodel=3"])


def test_teacher_members_are_overrides_of_the_teacher_section():
    cfg = load_config(None, ["teacher.dropout=0.2", "teacher.members=[{dropout: 0.3}, {}]"])
    first, second = cfg.teacher.member_configs()
    assert (first.dropout, second.dropout) == (0.3, 0.2)
    assert first.d_model == second.d_model == cfg.teacher.d_model
    assert first.members == second.members == []
    assert load_config().teacher.member_configs() == [load_config().teacher]


def test_teacher_member_typo_fails_at_load():
    with pytest.raises(ValueError, match=r"teacher.members\[1\]: unknown key\(s\) \['dropuot'\]"):
        load_config(None, ["teacher.members=[{}, {dropuot: 0.3}]"])
    with pytest.raises(ValueError, match=r"teacher.members\[0\]: expected a mapping"):
        load_config(None, ["teacher.members=[0.3]"])


def test_malformed_override():
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides({}, ["teacher.lr"])


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_configs_load():
    from tandemrec.paths import REPO_ROOT

    paths = sorted((REPO_ROOT / "configs").glob("*.yaml"))
    assert paths
    for path in paths:
        cfg = load_config(path)
        # smoke.yaml serves any generated dataset; demo.yaml is the demo's short ML-100K run;
        # ml-1m-ensemble.yaml is ML-1M with an ensemble teacher.
        expected = {"smoke": cfg.dataset, "demo": "ml-100k",
                    "ml-1m-ensemble": "ml-1m"}.get(path.stem, path.stem)
        assert cfg.dataset == expected


def test_protocol_and_new_items_share():
    cfg = load_config()
    assert (cfg.protocol, cfg.new_items_share) == ("standard", 0.1)
    cfg = load_config(None, ["protocol=new-items", "new_items_share=0.25"])
    assert (cfg.protocol, cfg.new_items_share) == ("new-items", 0.25)
    assert cfg.to_dict()["protocol"] == "new-items"
    with pytest.raises(ValueError, match=r"protocol must be one of \['standard', 'new-items'\], "
                                         r"got 'new_items'"):
        load_config(None, ["protocol=new_items"])
    for bad in ("0", "1", "1.5", "-0.1", "ten", "true"):
        with pytest.raises(ValueError, match="new_items_share must be a number with 0 < share"):
            load_config(None, [f"new_items_share={bad}"])
