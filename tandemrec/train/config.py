"""Typed training configs: dataclasses loaded from YAML, with `key=value` command-line overrides."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

Protocol = Literal["standard", "new-items"]


@dataclass
class TeacherTrainConfig:
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 2
    mlp_hidden: int = 256
    max_len: int = 200
    dropout: float = 0.2
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.0
    ema: float = 0.0  # > 0: validate and keep a moving average of the weights (train/loop.py)
    warmup_steps: int = 100
    max_epochs: int = 40
    patience: int = 4  # epochs without validation NDCG@10 improvement before stopping
    max_minutes: float = 0.0  # wall-clock budget for this stage; 0 = none
    use_text: bool = True
    item_scale: bool = False  # learned per-item norm (models/teacher.py ItemTower)
    pos_std: float = 1.0  # initial std of the position embeddings (models/blocks.Decoder)
    coarse_epochs: int = 3  # training of the intent-token (coarse) input mode
    loss_positions: float = 1.0  # share of positions scored per step (see batches.loss_positions)
    # Probability that a history longer than max_len trains on its most recent window this
    # epoch rather than an earlier one (see batches.window); 1 = truncate, as SASRec does.
    recent_window: float = 1.0
    # "bf16": bfloat16 matmuls in training where the CPU runs them natively (train/precision.py)
    precision: str = "fp32"
    # An ensemble: one entry per member, each a set of overrides of the fields above ({} = as
    # above), trained in turn with seeds seed, seed + 1, ... and sharing max_minutes. Empty: one
    # teacher. The cloud serves the members' mean log-probability (models/teacher_ensemble.py).
    members: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.member_configs()  # a typo in a member's overrides fails at load, not an hour in

    def member_configs(self) -> list[TeacherTrainConfig]:
        """The configs the members train with (just this one when there are no members)."""
        if not self.members:
            return [self]
        known = {f.name for f in dataclasses.fields(self)} - {"members"}
        configs = []
        for i, overrides in enumerate(self.members):
            if not isinstance(overrides, dict):
                raise ValueError(f"teacher.members[{i}]: expected a mapping of overrides such as "
                                 f"{{dropout: 0.3}}, got {overrides!r}")
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise ValueError(f"teacher.members[{i}]: unknown key(s) {unknown}; expected "
                                 f"some of {sorted(known)}")
            configs.append(dataclasses.replace(self, members=[], **overrides))
        return configs


@dataclass
class IntentConfig:
    n_intents: int = 64  # level-1 codes = intent tokens
    # k-means sample weights: "none", "popularity" or "sqrt" (of training counts). Weighted
    # centroids split the popular items finely, which is where the next items usually are.
    weighting: str = "none"
    # Floor on items per intent token: smaller clusters are merged into their neighbours, so a
    # token never narrows down to fewer items than this (1 = no floor).
    min_items: int = 1
    level2: int = 16
    level3: int = 16
    kmeans_iters: int = 25


@dataclass
class StudentTrainConfig:
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    mlp_hidden: int = 128
    max_len: int = 200
    dropout: float = 0.2
    batch_size: int = 128
    lr: float = 2e-3
    warmup_steps: int = 100
    max_epochs: int = 12
    patience: int = 3
    max_minutes: float = 0.0
    temperature: float = 2.0
    kd_top_k: int = 64  # teacher items kept per position in the cached soft targets
    w_kd: float = 1.0  # KL to the teacher's item distribution (scaled by T^2)
    w_item: float = 1.0  # cross-entropy on the true next item
    w_intent: float = 0.5  # cross-entropy on the next intent token
    loss_positions: float = 1.0  # share of positions scored per step
    precision: str = "fp32"  # "bf16": bfloat16 matmuls in training (train/precision.py)
    pos_std: float = 1.0  # initial std of the position embeddings (models/blocks.Decoder)
    keep: str = "best"  # weights to end with: "best" validation epoch or "last" (train/loop.fit)


@dataclass
class CompressConfig:
    param_ratio: float = 0.5  # target share of the student's parameters after SVD
    align_steps: int = 150  # progressive alignment steps per stage (embedding, each layer)
    finetune_epochs: int = 3  # final logit alignment to the uncompressed student
    max_minutes: float = 0.0  # wall-clock budget for the fine-tuning epochs; 0 = none
    lr: float = 1e-3
    batch_size: int = 128
    atol: float = 1e-3  # ONNX vs torch tolerance on item scores
    loss_positions: float = 1.0  # share of positions scored per fine-tuning step


@dataclass
class EvalConfig:
    ks: tuple[int, ...] = (5, 10, 20)
    n_retrieve: int = 600  # candidates the cloud retrieves under the requested intents
    n_candidates: int = 600  # items the cloud returns (teacher top-N); = n_retrieve sends all
    top_intents: int = 8  # intent tokens the device sends
    coarse_history: int = 50  # L: intent tokens of the last L interactions sent upstream
    popular_share: float = 0.1  # share of the candidates filled with popular items
    # Fusion (edge_client/fusion.py); None = chosen on validation users among the choices.
    fusion_weight: float | None = None  # teacher share; 0 = the device alone
    device_top: int | None = None  # the device's own top items ranked beside the cloud's
    cloud_missing: str | None = None  # "floor" | "mass": teacher score of items it did not send
    device_missing: str | None = None  # "intent" | "teacher": device score of unknown items
    # A teacher share is chosen only if its validation gain over the device alone is positive
    # at this bootstrap confidence (paired over users); 0 takes the best validation mean.
    fusion_confidence: float = 0.95
    latency_requests: int = 300
    sampled_negatives: int = 100

    def __post_init__(self) -> None:
        rules = {"cloud_missing": ("floor", "mass"), "device_missing": ("intent", "teacher")}
        for name, allowed in rules.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ValueError(f"eval.{name} must be one of {list(allowed)} or null (tune on "
                                 f"validation users), got {value!r}")
        w = self.fusion_weight
        if w is not None and (isinstance(w, bool) or not isinstance(w, int | float)
                              or not 0 <= w <= 1):
            raise ValueError(f"eval.fusion_weight must be in [0, 1] or null, got {w!r}")
        n = self.device_top
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"eval.device_top must be an integer >= 0 or null, got {n!r}")


@dataclass
class PipelineConfig:
    dataset: str = "ml-100k"
    seed: int = 42
    threads: int = 2
    # Users validated (early stopping, fusion tuning); the others also train on their
    # second-to-last item (data/split.leave_one_out). 0 = validate every user.
    val_users: int = 0
    # "new-items": the fresh-catalog protocol (data/new_items.py). A seeded share of the items,
    # drawn in proportion to their training counts, is new to the device: the student never
    # trains on them while the teacher does. "standard": every item is known to both.
    protocol: Protocol = "standard"
    new_items_share: float = 0.1  # share of the catalog that is new under "new-items"
    teacher: TeacherTrainConfig = field(default_factory=TeacherTrainConfig)
    intents: IntentConfig = field(default_factory=IntentConfig)
    student: StudentTrainConfig = field(default_factory=StudentTrainConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if self.protocol not in get_args(Protocol):
            raise ValueError(f"protocol must be one of {list(get_args(Protocol))}, "
                             f"got {self.protocol!r}")
        share = self.new_items_share
        if isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share < 1:
            raise ValueError(f"new_items_share must be a number with 0 < share < 1, got {share!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Instantiate a (nested) dataclass from a dict, rejecting unknown keys by name."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{where}: unknown key '{key}'; expected one of {sorted(known)}")
        f = known[key]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value or {}, f"{where}.{key}")
        elif isinstance(default, tuple):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


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
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ValueError(f"config file not found: {path}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    return _build(PipelineConfig, data, str(path or "config"))
