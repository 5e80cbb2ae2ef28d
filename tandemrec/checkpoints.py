"""Save and load model checkpoints; each carries its model config so it rebuilds itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tandemrec.models.sid_student import SidStudent, SidStudentConfig
from tandemrec.models.student import Student, StudentConfig
from tandemrec.models.teacher import Teacher, TeacherConfig
from tandemrec.models.teacher_ensemble import AnyTeacher, TeacherEnsemble

KINDS = {Teacher: "teacher", TeacherEnsemble: "teacher-ensemble", Student: "student",
         SidStudent: "sid-student"}


def save_model(model: AnyTeacher | Student | SidStudent, path: Path,
               extra: dict[str, Any] | None = None) -> Path:
    """Write {kind, config, state_dict, extra} atomically (tmp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"kind": KINDS[type(model)], "config": model.cfg.to_dict(),
                "state_dict": model.state_dict(), "extra": extra or {}}, tmp)
    tmp.replace(path)
    return path


def _load(path: Path, kinds: tuple[str, ...]) -> dict[str, Any]:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first "
                                f"(tandem pipeline runs them all)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("kind") not in kinds:
        raise ValueError(f"{path} holds a {ckpt.get('kind')} checkpoint, expected "
                         + " or ".join(kinds))
    return ckpt


def _teacher_config(config: dict[str, Any]) -> TeacherConfig:
    """Checkpoints written before item_scale was removed carry `item_scale: false`: dropped."""
    return TeacherConfig(**{k: v for k, v in config.items() if (k, v) != ("item_scale", False)})


def load_teacher(path: Path) -> tuple[AnyTeacher, dict[str, Any]]:
    """A teacher or a teacher ensemble, whichever the checkpoint holds, in eval mode."""
    ckpt = _load(path, ("teacher", "teacher-ensemble"))
    model: AnyTeacher
    if ckpt["kind"] == "teacher":
        model = Teacher(_teacher_config(ckpt["config"]))
    else:
        model = TeacherEnsemble([Teacher(_teacher_config(c))
                                 for c in ckpt["config"]["members"]])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt["extra"]


def load_student(path: Path) -> tuple[Student, dict[str, Any]]:
    ckpt = _load(path, ("student",))
    model = Student(StudentConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt["extra"]


def load_sid_student(path: Path) -> tuple[SidStudent, dict[str, Any]]:
    ckpt = _load(path, ("sid-student",))
    model = SidStudent(SidStudentConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval(), ckpt["extra"]
