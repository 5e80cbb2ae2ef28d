"""The Hugging Face transformers teacher backbone (issue 23 item 3).

A tiny random LLaMA-style config (2 layers, width 64) goes through every stage and the cloud
serves the bundle; checkpoints rebuild without the directory the backbone came from; local
pretrained weights are loaded, never downloaded; LoRA where peft is installed; clear errors.
"""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cloud_service.models import load_model
from tandem_contract.bundle import verify_pair
from tandemrec.checkpoints import load_teacher, save_model
from tandemrec.cli import app
from tandemrec.data import write_synthetic_csv
from tandemrec.models.hf_teacher import BackboneUnavailable, HFDecoder
from tandemrec.models.teacher import Teacher, TeacherConfig
from tandemrec.paths import CONFIGS_DIR
from tandemrec.train.config import TeacherTrainConfig, load_config
from tandemrec.train.teacher import build_teacher

pytestmark = pytest.mark.core

TINY = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128,
        "max_position_embeddings": 64}
TRAIN = [np.array([1, 2, 3, 4]), np.array([2, 5, 6]), np.array([7, 8])]


def tiny_teacher(backbone: str = "hf", **kw) -> Teacher:
    torch.manual_seed(0)
    cfg = TeacherTrainConfig(backbone=backbone, max_len=30, dropout=0.1, **kw)
    text = np.random.default_rng(0).random((11, 8), dtype=np.float32)
    return build_teacher(10, text, cfg, TRAIN)


def test_pipeline_with_a_tiny_llama_teacher(tmp_path, monkeypatch):
    """Every stage on the smoke config with an hf teacher; the student exports to ONNX as with
    the native one and the cloud serves the bundle's teacher."""
    monkeypatch.setenv("TANDEM_CACHE_DIR", str(tmp_path / "cache"))
    logs = tmp_path / "shop.csv"
    write_synthetic_csv(logs, n_users=300, n_items=120, min_len=8, max_len=30, seed=3)
    run_dir = tmp_path / "run"
    # One thread: the tiny model gains nothing from two, and on a busy machine the second spins.
    short = ["threads=1", "teacher.max_epochs=2", "teacher.coarse_epochs=1",
             "student.max_epochs=2", "compress.align_steps=5", "compress.finetune_epochs=1",
             "eval.latency_requests=5"]
    sets = ["teacher.backbone=hf", f"teacher.hf_config={json.dumps(TINY)}", *short]
    res = CliRunner().invoke(app, ["pipeline", "--dataset", str(logs), "--config",
                                   str(CONFIGS_DIR / "smoke.yaml"), "--run-dir", str(run_dir),
                                   *[a for s in sets for a in ("--set", s)]])
    assert res.exit_code == 0, f"{res.output}\n{res.exception!r}"

    teacher, _ = load_teacher(run_dir / "teacher.pt")
    assert teacher.cfg.backbone == "hf" and teacher.cfg.d_model == 64
    assert isinstance(teacher.decoder, HFDecoder)
    assert type(teacher.decoder.backbone).__name__ == "LlamaModel"
    run = json.loads((run_dir / "run.json").read_text())
    assert run["train"]["val_ndcg@10"] > 0 and run["train"]["coarse_val_ndcg@10"] > 0
    for rep in run["export"]["parity"].values():  # the student exports as before
        assert max(rep["max_abs_diff_scores"], rep["max_abs_diff_intents"]) <= rep["atol"]
    device, cloud = verify_pair(run_dir / "bundle")
    assert set(device["files"]) == {"student_int8.onnx", "device_items.json"}
    served = load_model(run_dir / "bundle", runtime="onnx")
    assert served.graph is None  # an HF backbone is served by torch whatever the setting
    scores = served.score([np.array([1, 2, 3]), np.array([], dtype=np.int64)], coarse=True)
    assert scores.shape == (2, served.n_items + 1) and np.isfinite(scores).all()
    (report,) = (run_dir / "results").glob("quality-*.json")
    rows = {r["mode"]: r for r in json.loads(report.read_text())["rows"]}
    assert rows["cloud-full"]["ndcg@10"] > 0 and rows["student-int8"]["ndcg@10"] > 0


def test_checkpoint_rebuilds_a_pretrained_backbone_without_its_directory(tmp_path, monkeypatch):
    """hf:<dir> loads the directory's weights; the checkpoint alone rebuilds the teacher."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    lm = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in TINY.items() if k != "model_type"},
                                      vocab_size=100))
    src = tmp_path / "tiny-llama"
    lm.save_pretrained(src)
    model = tiny_teacher(f"hf:{src}")
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    backbone = model.decoder.backbone
    torch.testing.assert_close(backbone.layers[1].mlp.up_proj.weight,
                               lm.model.layers[1].mlp.up_proj.weight, rtol=0, atol=0)
    assert backbone.get_input_embeddings().weight.shape == (1, 64)  # the token table is cut
    assert model.cfg.hf_config["vocab_size"] == 1 and model.cfg.hf_config["_name_or_path"] == ""
    # items enter at the scale of the model's own token embeddings
    rms = lm.model.embed_tokens.weight.pow(2).mean().sqrt().item()
    assert model.decoder.in_scale.item() == pytest.approx(rms, rel=1e-5)

    model.eval()
    x = torch.tensor([[0, 0, 3, 4], [0, 0, 0, 0], [5, 6, 7, 8]])  # one history is empty
    with torch.no_grad():
        before = model(x)
    assert torch.isfinite(before).all()
    path = save_model(model, tmp_path / "teacher.pt")
    for f in src.iterdir():
        f.unlink()
    src.rmdir()
    loaded, _ = load_teacher(path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), before, rtol=0, atol=0)
        torch.testing.assert_close(loaded.position_scores(x)[:, -1], before, rtol=1e-5,
                                   atol=1e-5)


def test_config_only_directory_and_file_give_random_weights(tmp_path):
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY))
    for spec in (f"hf:{folder}", f"hf:{folder / 'config.json'}"):
        model = tiny_teacher(spec, hf_config={"num_hidden_layers": 1})  # overrides the file
        assert model.cfg.d_model == 64 and model.cfg.n_layers == 1
        assert len(model.decoder.backbone.layers) == 1


def test_native_teacher_config_is_unchanged():
    """The default: no new key in a native teacher's checkpoint or run config."""
    assert set(TeacherConfig(n_items=5).to_dict()) == {
        "d_model", "n_layers", "n_heads", "mlp_hidden", "max_len", "dropout", "pos_std",
        "n_items", "text_dim", "n_intents"}
    dumped = load_config(CONFIGS_DIR / "smoke.yaml").to_dict()["teacher"]
    assert not {"backbone", "hf_config", "lora"} & set(dumped)
    assert isinstance(tiny_teacher("native").decoder, torch.nn.Module)


def test_bad_backbone_settings_are_clear_errors(tmp_path, monkeypatch):
    def fails(overrides, message):
        with pytest.raises(ValueError, match=message):
            load_config(None, overrides)

    fails(["teacher.backbone=gpt"], "expected native, hf or hf:<local directory")
    fails(["teacher.hf_config={model_type: llama}"], "apply to a Hugging Face backbone only")
    fails(["teacher.backbone=hf"], "needs a model_type")
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None)
    fails([f"teacher.backbone=hf:{tmp_path}", "teacher.lora={r: 4}"], "pip install peft")
    monkeypatch.undo()

    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        tiny_teacher(f"hf:{tmp_path / 'no-such-model'}")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        tiny_teacher(f"hf:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "t5"}))  # seq2seq
    with pytest.raises(ValueError, match="not a causal language model"):
        tiny_teacher(f"hf:{tmp_path}")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        tiny_teacher("hf", hf_config={**TINY, "max_position_embeddings": 16})


class Bidirectional(torch.nn.Module):
    """A stand-in backbone whose every position reads the whole sequence (an encoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(hidden_size=8, model_type="encoder")
        self.emb = torch.nn.Embedding(5, 8)

    def get_input_embeddings(self) -> torch.nn.Embedding:
        return self.emb

    def set_input_embeddings(self, emb: torch.nn.Embedding) -> None:
        self.emb = emb

    def forward(self, inputs_embeds, attention_mask, use_cache):
        return SimpleNamespace(last_hidden_state=inputs_embeds.cumsum(1).flip(1))


def test_a_backbone_that_sees_later_items_is_refused():
    with pytest.raises(ValueError, match="encoder backbone is not causal"):
        HFDecoder({"model_type": "encoder"}, 0.0, Bidirectional())


def test_lora_without_peft_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "peft", None)  # import peft fails
    model = tiny_teacher("hf", hf_config=TINY)
    with pytest.raises(BackboneUnavailable, match="pip install peft"):
        model.decoder.add_lora(r=4, alpha=8)


def test_lora_trains_adapters_and_merges_into_a_plain_backbone():
    pytest.importorskip("peft")
    model = tiny_teacher("hf", hf_config=TINY, lora={"r": 4, "alpha": 8})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    in_backbone = {n for n in trainable if n.startswith("decoder.backbone.")}
    assert in_backbone and all("lora_" in n for n in in_backbone)
    assert {"items.id_emb.weight", "out_bias", "decoder.in_scale"} <= trainable
    x = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model.train()
    model.position_scores(x).logsumexp(-1).mean().backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        adapted = model(x)
    model.decoder.merge_lora()
    with torch.no_grad():
        torch.testing.assert_close(model(x), adapted, rtol=1e-4, atol=1e-4)
    plain = Teacher(model.cfg)  # what load_teacher builds: no peft, no adapters
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), adapted, rtol=1e-4, atol=1e-4)
