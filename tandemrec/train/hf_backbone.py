"""Where an hf teacher backbone comes from: a config dict, a config file, or a local checkpoint.

`teacher.backbone` (train/config.py) is "hf" (random weights from `teacher.hf_config`) or
"hf:<path>": a directory with a config.json, whose weights (safetensors or torch, sharded or
not) are loaded when it has them, or a config .json file. `teacher.hf_config` then overrides
the file's values. Nothing is ever downloaded: the hub is switched off (HF_HUB_OFFLINE=1),
every load is `local_files_only` and no repository code runs (`trust_remote_code=False`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from tandemrec.models.hf_teacher import build_config, is_causal_lm, items_config
from tandemrec.progress import log

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def backbone_path(backbone: str) -> Path | None:
    """The local path an "hf:<path>" backbone names; None for "hf" (config only)."""
    if backbone == "hf":
        return None
    path = Path(backbone.removeprefix("hf:")).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"teacher.backbone {backbone}: no such local file or directory. "
                                f"Nothing is downloaded: give a directory holding config.json "
                                f"(and the weights), e.g. one written by save_pretrained")
    if path.is_dir() and not (path / "config.json").exists():
        raise FileNotFoundError(f"teacher.backbone {backbone}: the directory has no config.json")
    return path


def has_weights(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in WEIGHT_FILES)


def load_backbone(backbone: str, overrides: dict[str, Any]
                  ) -> tuple[dict[str, Any], nn.Module | None]:
    """(the teacher's hf_config, the pretrained model or None for random weights)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    path = backbone_path(backbone)
    if path is None or path.is_file():  # every value written out, defaults included
        values = {} if path is None else json.loads(path.read_text())
        return items_config(build_config(items_config({**values, **overrides}))), None
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False,
                                        **overrides)
    if not is_causal_lm(config):
        raise ValueError(f"teacher.backbone {backbone}: model_type {config.model_type!r} is not "
                         f"a causal language model")
    if not has_weights(path):
        log(f"teacher backbone: {config.model_type} config from {path}, random weights "
            f"(no {' or '.join(WEIGHT_FILES[::2])} there)")
        return items_config(config), None
    model = AutoModel.from_pretrained(path, config=config, local_files_only=True,
                                      trust_remote_code=False)
    n = sum(p.numel() for p in model.parameters())
    log(f"teacher backbone: {config.model_type}, {n / 1e6:.1f} M parameters from {path}")
    return items_config(model.config), model
