"""Typed training configs: pydantic models from YAML, with `key=value` command-line overrides.

Every section forbids unknown keys and checks types strictly (`teacher.lr=abc` or
`student.max_epochs=true` stop with a message naming the key); choices are `Literal`s.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from tandemrec.models.shape import DecoderShape, Section
from tandemrec.paths import config_path

Protocol = Literal["standard", "new-items"]
Precision = Literal["fp32", "bf16"]  # "bf16": bfloat16 matmuls where the CPU has them natively
# Where training runs (train/device.py): "auto" = a CUDA GPU when torch sees one, else the CPU.
DeviceName = Literal["auto", "cpu", "cuda"]
Minutes = Annotated[float, Field(ge=0)]  # a wall-clock budget; 0 = none
Share = Annotated[float, Field(gt=0, le=1)]
STRICT = ConfigDict(strict=True)


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# The teacher's sequence model: "native" (models/blocks.Decoder), "hf" (a transformers causal
# LM built from teacher.hf_config, random weights) or "hf:<path>" (a local directory with a
# config.json, and weights if it has them, or a config .json file); docs/training.md.
def _backbone(value: str) -> str:
    if value not in ("native", "hf") and not (value.startswith("hf:") and len(value) > 3):
        raise ValueError("expected native, hf or hf:<local directory or config .json>")
    return value


Backbone = Annotated[str, AfterValidator(_backbone)]
BACKBONE_KEYS = ("backbone", "hf_config", "lora")


class LoraSettings(Section):
    """Low-rank adapters on the hf backbone (models/hf_teacher.HFDecoder.add_lora), via peft."""

    model_config = STRICT

    r: int = Field(8, gt=0)
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | None = None  # None: peft's default for the model type


class TeacherTrainConfig(DecoderShape):
    model_config = STRICT
    shape_defaults: ClassVar[dict[str, Any]] = {"d_model": 128, "mlp_hidden": 256}

    batch_size: int = Field(128, gt=0)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    max_epochs: int = Field(40, gt=0)
    patience: int = Field(4, gt=0)  # epochs without validation NDCG@10 improvement before stopping
    max_minutes: Minutes = 0.0  # wall-clock budget for this stage
    use_text: bool = True
    coarse_epochs: int = Field(3, ge=0)  # training of the intent-token (coarse) input mode
    loss_positions: Share = 1.0  # share of positions scored per step (see batches.loss_positions)
    # Probability that a history longer than max_len trains on its most recent window this
    # epoch rather than an earlier one (see batches.window); 1 = truncate, as SASRec does.
    recent_window: float = Field(1.0, ge=0, le=1)
    precision: Precision = "fp32"  # train/precision.py
    # An ensemble: one entry per member, each a set of overrides of the fields above ({} = as
    # above), trained in turn with seeds seed, seed + 1, ... and sharing max_minutes. Empty: one
    # teacher. The cloud serves the members' mean log-probability (models/teacher_ensemble.py).
    members: list[Any] = Field(default_factory=list)
    backbone: Backbone = "native"
    # Config values of the hf backbone: all of it for "hf" (model_type, hidden_size, ...), or
    # overrides of the directory's config.json for "hf:<path>". The teacher's d_model becomes
    # the backbone's hidden_size; n_layers, n_heads and mlp_hidden then say nothing.
    hf_config: dict[str, Any] = Field(default_factory=dict)
    lora: LoraSettings | None = None  # None: full fine-tuning; LoRA needs peft installed

    @model_validator(mode="after")
    def _members_load(self) -> TeacherTrainConfig:
        self.member_configs()  # a typo in a member's overrides fails at load, not an hour in
        return self

    @model_validator(mode="after")
    def _backbone_settings(self) -> TeacherTrainConfig:
        if self.backbone == "native":
            if self.hf_config or self.lora is not None:
                raise ValueError("hf_config and lora apply to a Hugging Face backbone only: "
                                 "set backbone: hf (with hf_config) or hf:<local directory>")
        elif self.backbone == "hf" and "model_type" not in self.hf_config:
            raise ValueError("backbone hf builds the model from hf_config, which needs a "
                             "model_type, e.g. {model_type: llama, hidden_size: 64, "
                             "num_hidden_layers: 2}; or name a local directory: hf:<path>")
        if self.lora is not None and importlib.util.find_spec("peft") is None:
            raise ValueError("lora needs the peft package, which is not installed: pip install "
                             "peft, or remove teacher.lora to fine-tune the backbone in full")
        return self

    @model_serializer(mode="wrap")
    def _native_as_before(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A native teacher's section reads as before backbones existed (same config.json)."""
        values = handler(self)
        if self.backbone == "native":
            for key in BACKBONE_KEYS:
                values.pop(key, None)
        return values

    def member_configs(self) -> list[TeacherTrainConfig]:
        """The configs the members train with (just this one when there are no members)."""
        if not self.members:
            return [self]
        known = set(type(self).model_fields) - {"members"}
        configs = []
        for i, overrides in enumerate(self.members):
            if not isinstance(overrides, dict):
                raise ValueError(f"teacher.members[{i}]: expected a mapping of overrides such as "
                                 f"{{dropout: 0.3}}, got {overrides!r}")
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise ValueError(f"teacher.members[{i}]: unknown key(s) {unknown}; expected "
                                 f"some of {sorted(known)}")
            values = {**self.model_dump(), **overrides, "members": []}
            configs.append(TeacherTrainConfig.model_validate(values))
        return configs


class IntentConfig(Section):
    model_config = STRICT

    n_intents: int = Field(64, gt=1)  # level-1 codes = intent tokens
    # k-means sample weights: of training counts, or none. Weighted centroids split the
    # popular items finely, which is where the next items usually are.
    weighting: Literal["none", "popularity", "sqrt"] = "none"
    # Floor on items per intent token: smaller clusters are merged into their neighbours, so a
    # token never narrows down to fewer items than this (1 = no floor).
    min_items: int = Field(1, gt=0)
    level2: int = Field(16, gt=0)
    level3: int = Field(16, gt=0)
    kmeans_iters: int = Field(25, gt=0)


class StudentTrainConfig(DecoderShape):
    model_config = STRICT

    batch_size: int = Field(128, gt=0)
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(100, ge=0)
    max_epochs: int = Field(12, gt=0)
    patience: int = Field(3, gt=0)
    max_minutes: Minutes = 0.0
    temperature: float = Field(2.0, gt=0)
    kd_top_k: int = Field(64, gt=0)  # teacher items kept per position in the cached soft targets
    w_kd: float = Field(1.0, ge=0)  # KL to the teacher's item distribution (scaled by T^2)
    w_item: float = Field(1.0, ge=0)  # cross-entropy on the true next item
    w_intent: float = Field(0.5, ge=0)  # cross-entropy on the next intent token
    loss_positions: Share = 1.0  # share of positions scored per step
    precision: Precision = "fp32"
    keep: Literal["best", "last"] = "best"  # weights to end with (train/loop.fit)
    # "sid": also distil the semantic-id student (models/sid_student.py), whose size does not
    # grow with the catalog, and evaluate it beside the full-table one (sid-* modes).
    kind: Literal["table", "sid"] = "table"
    hash_buckets: int = Field(0, ge=0)  # the semantic-id student's hashed-id rows; 0 = none
    # Hashes per item into those rows: with 2, items that share one bucket keep residuals of
    # their own through the other (docs/semantic-ids.md). The device's size does not change.
    hash_count: int = Field(1, ge=1, le=4)
    # Where the semantic-id student comes from: distilled from the teacher (teacher), or the
    # compressed table student projected onto semantic ids (table: train/sid_project.py; after
    # the table student's compression; compress.sid_finetune then fine-tunes it).
    sid_init: Literal["teacher", "table"] = "teacher"
    # How the projection weighs each item's error: alike, or by (the square root of) its
    # number of training events, so that items that are often the target are kept best.
    sid_weighting: Literal["none", "sqrt", "popularity"] = "none"


class CompressConfig(Section):
    model_config = STRICT

    param_ratio: float = Field(0.5, gt=0, le=1)  # target share of the student's parameters
    align_steps: int = Field(150, ge=0)  # progressive alignment steps per stage
    finetune_epochs: int = Field(3, ge=0)  # final logit alignment to the uncompressed student
    max_minutes: Minutes = 0.0  # wall-clock budget for the fine-tuning epochs
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, gt=0)
    atol: float = Field(1e-3, gt=0)  # ONNX vs torch tolerance on item scores
    loss_positions: Share = 1.0  # share of positions scored per fine-tuning step
    # The semantic-id student gets this stage's fine-tuning too (without the SVD it has no use
    # for): finetune_epochs more at lr, aligned to a frozen distribution over the catalog: its
    # own (self), or the compressed table student's (table: a teacher assistant).
    sid_finetune: bool = False
    sid_finetune_ref: Literal["self", "table"] = "self"


class EvalConfig(Section):
    model_config = STRICT

    ks: Annotated[tuple[int, ...], BeforeValidator(_as_tuple)] = (5, 10, 20)
    n_retrieve: int = Field(600, gt=0)  # candidates the cloud retrieves under the intents
    n_candidates: int = Field(600, gt=0)  # items the cloud returns; = n_retrieve sends all
    top_intents: int = Field(8, gt=0)  # intent tokens the device sends
    coarse_history: int = Field(50, gt=0)  # L: intent tokens of the last L interactions
    popular_share: float = Field(0.1, ge=0, le=1)  # share of candidates filled with popular items
    # Fusion (edge_client/fusion.py); None = chosen on validation users among the choices.
    fusion_weight: Annotated[float, Field(ge=0, le=1)] | None = None  # 0 = the device alone
    device_top: Annotated[int, Field(ge=0)] | None = None  # device's own top items ranked too
    cloud_missing: Literal["floor", "mass"] | None = None  # teacher score of items not sent
    device_missing: Literal["intent", "teacher", "mixture"] | None = None  # unknown items' score
    device_temperature: Annotated[float, Field(gt=0)] | None = None  # flattens the device (> 1)
    # A teacher share is chosen only if its validation gain over the device alone is positive
    # at this bootstrap confidence (paired over users); 0 takes the best validation mean.
    fusion_confidence: float = Field(0.95, ge=0, lt=1)
    # Where some targets are new to the device: settings within this share of the best NDCG@10
    # are taken as equal for all users, and the one that ranks new targets best is chosen.
    fusion_tolerance: float = Field(0.01, ge=0, lt=1)
    latency_requests: int = Field(300, gt=0)
    sampled_negatives: int = Field(100, gt=0)


class PipelineConfig(Section):
    model_config = STRICT

    dataset: str = "ml-100k"
    seed: int = Field(42, ge=0)
    threads: int = Field(2, gt=0)  # CPU threads per process (under torchrun: cores / processes)
    # Training, distillation, compression and the evaluation's batched teacher scoring run
    # there; on a GPU under bf16 autocast (docs/training.md). Serving latencies stay on the CPU.
    device: DeviceName = "auto"
    # Users validated (early stopping, fusion tuning); the others also train on their
    # second-to-last item (data/split.leave_one_out). 0 = validate every user.
    val_users: int = Field(0, ge=0)
    # Share of the validated users kept apart to choose the fusion setting on: no model early-
    # stops on them, so a teacher picked at its best validation epoch does not look better
    # there than on test users (data/split.leave_one_out). 0 = tune on the early-stopping users.
    tune_share: float = Field(0.5, ge=0, lt=1)
    # "new-items": the fresh-catalog protocol (data/new_items.py). A seeded share of the items,
    # drawn in proportion to their training counts, is new to the device: the student never
    # trains on them while the teacher does. "standard": every item is known to both.
    protocol: Protocol = "standard"
    new_items_share: float = Field(0.1, gt=0, lt=1)  # share of the catalog new to the device
    teacher: TeacherTrainConfig = Field(default_factory=TeacherTrainConfig)
    intents: IntentConfig = Field(default_factory=IntentConfig)
    student: StudentTrainConfig = Field(default_factory=StudentTrainConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


def _message(exc: ValidationError, where: str) -> str:
    """One line per problem, each naming the key as it is written in YAML or `--set`."""
    lines = []
    for err in exc.errors()[:5]:
        key = ".".join(str(p) for p in (where, *err["loc"]))
        if err["type"] == "extra_forbidden":
            section, name = key.rsplit(".", 1)
            lines.append(f"{section}: unknown key '{name}'; expected one of "
                         f"{_known(err['loc'][:-1])}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{key}: {msg} (got {err['input']!r})" if "input" in err
                         and not isinstance(err["input"], dict) else f"{key}: {msg}")
    return "; ".join(lines)


def _known(loc: tuple[Any, ...]) -> list[str]:
    """The keys the section at `loc` accepts."""
    cls: type[Section] = PipelineConfig
    for part in loc:
        field = cls.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type)
                                 and issubclass(field.annotation, Section)):
            return []
        cls = field.annotation
    return sorted(cls.model_fields)


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override '{item}' must look like key=value, e.g. teacher.lr=0.001")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = _parse_value(raw)
    return data


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Load a PipelineConfig from YAML (or defaults), then apply command-line overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = config_path(path)  # configs/<name>.yaml also names a shipped config
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ValueError(f"config file not found: {path}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ValueError(_message(exc, str(path or "config"))) from None
