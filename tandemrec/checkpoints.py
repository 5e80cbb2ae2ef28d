"""Save and load model checkpoints; each carries its model config so it rebuilds itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tandemrec.models.student import Student, StudentConfig
from tandemrec.models.teacher import Teacher, TeacherConfig


def save_model(model: Teacher | Student, path: Path, extra: dict[str, Any] | None = None) -> Path:
    """Write {kind, config, state_dict, extra} atomically (tmp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kind = "teacher" if isinstance(model, Teacher) else "student"
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"kind": kind, "config": model.cfg.to_dict(), "state_dict": model.state_dict(),
                "extra": extra or {}}, tmp)
    tmp.replace(path)
    return path


def _load(path: Path, kind: str) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first "
                                f"(tandem pipeline runs them all)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("kind") != kind:
        raise ValueError(f"{path} holds a {ckpt.get('kind')} checkpoint, expected a {kind}")
    return ckpt


def load_teacher(path: Path) -> tuple[Teacher, dict[str, Any]]:
    ckpt = _load(path, "teacher")
    model = Teacher(TeacherConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt["extra"]


def load_student(path: Path) -> tuple[Student, dict[str, Any]]:
    ckpt = _load(path, "student")
    model = Student(StudentConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt["extra"]
