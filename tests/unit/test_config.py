"""Training configs: YAML sections, dotted overrides and clear errors."""

from pathlib import Path

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
    from tandemrec.paths import CONFIGS_DIR

    paths = sorted(CONFIGS_DIR.glob("*.yaml"))
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
    with pytest.raises(ValueError, match=r"config\.protocol: Input should be 'standard' or "
                                         r"'new-items' \(got 'new_items'\)"):
        load_config(None, ["protocol=new_items"])
    for bad in ("0", "1", "1.5", "-0.1", "ten", "true"):
        with pytest.raises(ValueError, match="config.new_items_share: "):
            load_config(None, [f"new_items_share={bad}"])


@pytest.mark.parametrize(("override", "message"), [
    ("teacher.lr=abc", r"config\.teacher\.lr: Input should be a valid number \(got 'abc'\)"),
    ("student.max_epochs=true", r"config\.student\.max_epochs: Input should be a valid integer"),
    ("teacher.d_model=12.5", r"config\.teacher\.d_model: Input should be a valid integer"),
    ("student.keep=lst", r"config\.student\.keep: Input should be 'best' or 'last'"),
    ("intents.weighting=pop", r"config\.intents\.weighting: Input should be 'none', "),
    ("teacher.precision=fp16", r"config\.teacher\.precision: Input should be 'fp32' or 'bf16'"),
    ("student.dropout=1.5", r"config\.student\.dropout: Input should be less than 1"),
    ("eval.fusion_weight=2", r"config\.eval\.fusion_weight: Input should be less than or equal"),
    ("eval.cloud_missing=max", r"config\.eval\.cloud_missing: Input should be 'floor' or 'mass'"),
    ("teacher.n_heads=3", r"d_model \(128\) must be a multiple of n_heads \(3\)"),
    ("bogus=1", r"config: unknown key 'bogus'; expected one of \['compress', 'dataset'"),
    # Options measured as no gain and set by no config were removed (issue 21).
    ("teacher.ema=0.995", r"config\.teacher: unknown key 'ema'"),
    ("teacher.item_scale=true", r"config\.teacher: unknown key 'item_scale'"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_bad_value_in_yaml_names_the_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("student:\n  lr: fast\n")
    with pytest.raises(ValueError, match=r"c\.yaml\.student\.lr: Input should be a valid number"):
        load_config(path)


def test_member_overrides_are_typed_too():
    with pytest.raises(ValueError, match=r"dropout"):
        load_config(None, ["teacher.members=[{dropout: high}]"])


def test_teacher_and_student_share_one_shape_with_their_own_defaults():
    from tandemrec.models.shape import DecoderShape
    from tandemrec.models.student import StudentConfig
    from tandemrec.models.teacher import TeacherConfig

    cfg = load_config()
    assert (cfg.teacher.d_model, cfg.student.d_model) == (128, 64)
    assert set(cfg.student.shape()) == set(DecoderShape.model_fields)
    assert StudentConfig(n_items=5, n_intents=2, **cfg.student.shape()).d_model == 64
    assert TeacherConfig(n_items=5).d_model == cfg.teacher.d_model


def test_config_paths_name_shipped_configs(tmp_path, monkeypatch):
    """`--config configs/<name>.yaml` works from any directory, as from a wheel install."""
    from tandemrec.paths import CONFIGS_DIR, config_path, default_config

    monkeypatch.chdir(tmp_path)
    for given in ("configs/ml-1m.yaml", "ml-1m.yaml", "ml-1m"):
        assert config_path(given) == CONFIGS_DIR / "ml-1m.yaml"
    assert load_config("configs/demo.yaml").dataset == "ml-100k"
    assert default_config("ml-100k") == CONFIGS_DIR / "ml-100k.yaml"
    assert default_config("shop.csv") is None
    # A file of that name in the working directory wins; a missing one stays as given.
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "ml-1m.yaml").write_text("dataset: ml-1m\n")
    assert config_path("configs/ml-1m.yaml") == Path("configs/ml-1m.yaml")
    assert config_path("configs/nope.yaml") == Path("configs/nope.yaml")
