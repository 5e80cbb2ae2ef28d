"""The collaborative ranking: the device's own scores fused with the cloud's answer.

This is the one implementation of collaborative serving's last step. The SDK
(`EdgeClient.recommend`), the offline evaluation (`tandem evaluate`) and the fleet simulator
all call `fuse`, so the figures a pipeline reports are the rankings a device serves.

Both sides are put on one scale, log-probabilities over the catalog:
- the device: log-softmax of the student's item scores over the items its bundle knows;
- the cloud: the teacher's log-probabilities over its whole catalog (`CloudCandidates.logp`),
  sent for its top candidates only.

The ranked set is the union of the cloud's candidates and the device's own top `device_top`
items, so a target the cloud's intent retrieval missed can still be ranked by the device.
Each item gets `weight * teacher + (1 - weight) * device`; an item one side did not score
gets that side's principled estimate:
- cloud_missing="floor": the lowest log-probability the cloud returned (everything it did not
  return scored at most that); "mass": the teacher's probability mass left outside its answer,
  spread evenly over the items it did not return;
- device_missing="intent": the student's intent head, log p(intent) - log |intent| (the item's
  intent token comes with the cloud's answer); "teacher": the device has no opinion and adopts
  the teacher's log-probability; "mixture": as "teacher", and the device's own items give up
  the mass the teacher puts on items the device does not know (p(i) = (1 - M) p_device(i) with
  M the teacher's probability of the unknown candidates), since the student's distribution is
  conditional on the next item being one it knows.

`device_temperature` T puts the device on the teacher's scale first (temperature scaling,
Guo et al., 2017): log-softmax(log p_device / T). The two models are trained apart, so a
student sharper than the coarse teacher would rank its own items above every item only the
teacher knows; T > 1 flattens it. It changes no order among the device's own items.

With weight 0 and device_top >= k the top k is exactly the device alone, so the tuned setting
(weight 0 is among the choices) never ranks worse than the device on validation users.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np

CloudMissing = Literal["floor", "mass"]
DeviceMissing = Literal["intent", "teacher", "mixture"]


@dataclass(frozen=True)
class FusionConfig:
    """The knobs of `fuse`, chosen on validation users and shipped in the device bundle."""

    weight: float = 0.5  # teacher share: 0 = the device alone, 1 = the teacher alone
    device_top: int = 100  # the device's own top items added to the cloud's candidates
    cloud_missing: CloudMissing = "floor"
    device_missing: DeviceMissing = "intent"
    device_temperature: float = 1.0  # > 1 flattens the device's distribution (see above)

    def __post_init__(self) -> None:
        if not self.device_temperature > 0:  # also NaN
            raise ValueError(f"device_temperature must be > 0, got {self.device_temperature}")

    @classmethod
    def from_serving(cls, serving: dict, **overrides: object) -> FusionConfig:
        """From a bundle's serving settings (manifest extra); `overrides` that are None skip."""
        values = {k: serving[k] for k in ("device_top", "cloud_missing", "device_missing",
                                          "device_temperature") if k in serving}
        if "fusion_weight" in serving:
            values["weight"] = serving["fusion_weight"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def serving(self) -> dict:
        """The bundle's serving keys for this config (inverse of `from_serving`)."""
        return {"fusion_weight": self.weight, "device_top": self.device_top,
                "cloud_missing": self.cloud_missing, "device_missing": self.device_missing,
                "device_temperature": self.device_temperature}


@dataclass(frozen=True)
class CloudCandidates:
    """What the cloud answered: its top items with the teacher's catalog log-probabilities."""

    items: np.ndarray  # (C,) item ids, best first
    logp: np.ndarray  # (C,) teacher log-probabilities, normalised over the cloud's catalog
    intents: np.ndarray  # (C,) level-1 intent token of each item
    catalog_size: int  # items in the cloud's catalog (for the "mass" estimate)

    @classmethod
    def empty(cls) -> CloudCandidates:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, np.zeros(0, dtype=np.float64), z, 0)


@dataclass(frozen=True)
class DeviceView:
    """What the device's bundle knows: which item ids, their intents, the intents' sizes."""

    known: np.ndarray  # (N+1,) bool; index 0 (padding) is never known
    log_intent_size: np.ndarray  # (K+1,) log of known items per intent, plus one (the newcomer)

    @classmethod
    def build(cls, known: np.ndarray, item_intent: np.ndarray, n_intents: int) -> DeviceView:
        known = np.asarray(known, dtype=bool).copy()
        known[0] = False
        sizes = np.bincount(np.asarray(item_intent)[known], minlength=n_intents + 1)
        return cls(known, np.log(sizes[: n_intents + 1] + 1.0))

    @functools.cached_property
    def unknown(self) -> np.ndarray:
        """The ids below the catalog's size that the bundle does not know (padding among them)."""
        return np.flatnonzero(~self.known)

    @functools.cached_property
    def knows_all(self) -> bool:
        """Whether the bundle knows every id of its catalog but padding."""
        return len(self.unknown) == 1


def log_softmax(x: np.ndarray) -> np.ndarray:
    """Log-softmax of a vector; -inf entries stay -inf."""
    return _log_softmax_(np.array(x, dtype=np.float64))


def _log_softmax_(z: np.ndarray) -> np.ndarray:
    """`log_softmax` in place in a float64 vector the caller owns (no temporaries but exp)."""
    z -= z.max()
    z -= np.log(np.exp(z).sum())
    return z


def intent_log_probs(intent_logits: np.ndarray) -> np.ndarray:
    """(K+1,) log-softmax of the intent head over tokens 1..K; token 0 (padding) is -inf."""
    x = np.array(intent_logits, dtype=np.float64)
    x[0] = -np.inf
    return _log_softmax_(x)


def device_log_probs(item_scores: np.ndarray, view: DeviceView) -> np.ndarray:
    """(N+1,) student log-probabilities over the items the device knows; -inf elsewhere."""
    if len(item_scores) == len(view.known):
        s = np.array(item_scores, dtype=np.float64)
    else:
        s = np.full(len(view.known), -np.inf)
        n = min(len(item_scores), len(view.known))
        s[:n] = item_scores[:n]
    if view.knows_all:
        s[0] = -np.inf  # padding alone: one write, not a scatter
    else:
        s[view.unknown] = -np.inf
    return _log_softmax_(s)


def _teacher_missing(cloud: CloudCandidates, rule: CloudMissing) -> float:
    if len(cloud.logp) == 0:
        return 0.0  # no answer: the teacher is flat and the device ranks alone
    if rule == "floor":
        return float(cloud.logp.min())
    left = 1.0 - float(np.exp(cloud.logp).sum())
    rest = max(cloud.catalog_size - len(cloud.items), 1)
    return float(np.log(max(left, 1e-12) / rest))


@dataclass(frozen=True)
class FusionParts:
    """The union a ranking is drawn from, with both sides' log-probabilities for each item."""

    items: np.ndarray  # (U,) the cloud's candidates, then the device's own top items
    teacher: np.ndarray  # (U,)
    device: np.ndarray  # (U,)


def in_catalog(items: np.ndarray, size: int) -> np.ndarray:
    """The ids that index a score vector of `size` (a history may hold items newer than the
    device's bundle, past its catalog); the ids themselves when all do."""
    h = np.asarray(items, dtype=np.int64)
    if len(h) and _within(h, size):
        return h
    return h[(h >= 0) & (h < size)]


def _within(ids: np.ndarray, size: int) -> bool:
    """Whether the integer `ids` (at least one) all lie in [0, size)."""
    if ids.dtype == np.int64:  # one pass: read as unsigned, a negative id is past any size
        return bool(ids.view(np.uint64).max() < size)
    return bool(ids.min() >= 0 and ids.max() < size)


def fusion_parts(device_logp: np.ndarray, intent_logp: np.ndarray, view: DeviceView,
                 cloud: CloudCandidates, cfg: FusionConfig,
                 exclude: np.ndarray | None = None) -> FusionParts:
    """Both sides' scores over the union; `cfg.weight` is not used (see `mix`)."""
    items, keep, device = _union(device_logp, intent_logp, view, cloud, cfg, exclude)
    return FusionParts(items, _teacher_side(cloud, cfg, keep, len(items)), device)


def _union(device_logp: np.ndarray, intent_logp: np.ndarray, view: DeviceView,
           cloud: CloudCandidates, cfg: FusionConfig,
           exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The union's items, which of the cloud's it keeps first (`keep`), the device's scores."""
    t = cfg.device_temperature
    d = device_logp.copy() if t == 1 else _log_softmax_(device_logp / t)
    d[0] = -np.inf
    gone = in_catalog(exclude, len(d)) if exclude is not None and len(exclude) else None
    if gone is not None:
        d[gone] = -np.inf
    marks = _marks(cloud.items, gone, len(d))
    keep = ~_in(cloud.items, exclude) if marks is None else marks[cloud.items] < 2
    c_items = cloud.items[keep]
    own = _top(d, cfg.device_top)  # never consumed: consumed items score -inf
    own = own[~_in(own, c_items)] if marks is None else own[marks[own] == 0]
    c = len(c_items)
    items, device = np.empty(c + len(own), np.int64), np.empty(c + len(own))
    items[:c], items[c:] = c_items, own  # filled in place: cheaper than concatenating
    if view.knows_all and marks is not None and marks[0] == 0 and cfg.device_missing != "mixture":
        device[:c] = d[c_items]  # every id in the catalog (marks), none padding: all known
    else:
        known, c_logp = _known(c_items, view), cloud.logp[keep]
        if cfg.device_missing == "mixture":
            d += _known_share(c_logp, known)  # d is this call's own copy
        device[:c] = _device_scores(c_items, c_logp, cloud.intents[keep], d, intent_logp, view,
                                    cfg.device_missing, known)
    device[c:] = d[own]
    return items, keep, device


def _teacher_side(cloud: CloudCandidates, cfg: FusionConfig, keep: np.ndarray,
                  union: int) -> np.ndarray:
    """The teacher's scores over a union of `union` items, the cloud's kept (`keep`) first."""
    c_logp = cloud.logp[keep]
    teacher = np.empty(union)
    teacher[:len(c_logp)] = c_logp
    teacher[len(c_logp):] = _teacher_missing(cloud, cfg.cloud_missing)
    return teacher


def _marks(items: np.ndarray, gone: np.ndarray | None, size: int) -> np.ndarray | None:
    """Per id of the device's catalog: 1 where the cloud answered it, 2 where it was consumed
    (`gone`), else 0; None when the answer holds ids outside the catalog (then `_in`)."""
    if items.dtype.kind not in "iu" or not len(items) or not _within(items, size):
        return None
    marks = np.zeros(size, dtype=np.uint8)
    marks[items] = 1
    if gone is not None:
        marks[gone] = 2
    return marks


def _known(items: np.ndarray, view: DeviceView) -> np.ndarray:
    """Which of `items` the device's bundle knows (ids past its catalog are unknown)."""
    if len(items) and items.max() < len(view.known):
        return view.known[items]
    inside = items < len(view.known)
    known = np.zeros(len(items), dtype=bool)
    known[inside] = view.known[items[inside]]
    return known


def _known_share(logp: np.ndarray, known: np.ndarray) -> float:
    """log(1 - M), M the teacher's probability of the candidates the device does not know."""
    mass = float(np.exp(logp[~known]).sum())
    return float(np.log1p(-min(mass, 1.0 - 1e-6)))


def mix(weight: float, teacher: np.ndarray, device: np.ndarray) -> np.ndarray:
    """weight * teacher + (1 - weight) * device, where weight 0 and 1 are exactly one side."""
    if weight <= 0:
        return device
    if weight >= 1:
        return teacher
    return weight * teacher + (1.0 - weight) * device


def fuse(device_logp: np.ndarray, intent_logp: np.ndarray, view: DeviceView,
         cloud: CloudCandidates, cfg: FusionConfig,
         exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The fused ranking: (items, scores) best first over the union, history excluded.

    `device_logp` comes from `device_log_probs`, `intent_logp` from `intent_log_probs`,
    `exclude` holds the item ids already consumed.
    """
    items, keep, device = _union(device_logp, intent_logp, view, cloud, cfg, exclude)
    # mix's rule: weight 0 is the device alone, so the teacher's side is not even built
    fused = device if cfg.weight <= 0 else mix(
        cfg.weight, _teacher_side(cloud, cfg, keep, len(items)), device)
    order, ranked = _ranked(fused)
    return items[order], ranked


def _ranked(scores: np.ndarray, max_ties: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(order, scores[order]) for order = `np.argsort(-scores, kind="stable")`, from the
    unstable ascending sort read backwards, which takes half the time and needs no negated copy:
    equal scores lie side by side in its order, and each such run is put back in index order.
    With NaN, or more than `max_ties` ties, the stable sort itself."""
    order = scores.argsort()[::-1]
    ranked = scores[order]
    if len(order) < 2:
        return order, ranked
    tied = np.flatnonzero(ranked[1:] == ranked[:-1])  # i where ranks i and i + 1 tie
    if ranked[0] != ranked[0] or len(tied) > max_ties:  # NaN sorts last: first, read backwards
        order = np.argsort(-scores, kind="stable")
        return order, scores[order]
    if not len(tied):
        return order, ranked
    i = 0
    while i < len(tied):
        start = j = int(tied[i])
        while i + 1 < len(tied) and tied[i + 1] == j + 1:
            i, j = i + 1, j + 1
        order[start:j + 2] = np.sort(order[start:j + 2])
        i += 1
    return order, scores[order]  # tied 0.0 and -0.0 may have swapped: read them again


def target_positions(parts: FusionParts, weights: np.ndarray, target: int) -> np.ndarray:
    """The 0-based position `fuse` gives `target` under each weight; -1 where it is absent.

    The same ordering as `fuse` (a stable sort), without sorting: what evaluation uses to try
    many weights on the same parts.
    """
    where = np.flatnonzero(parts.items == target)
    if not len(where):
        return np.full(len(weights), -1, dtype=np.int64)
    pos = int(where[0])
    out = np.empty(len(weights), dtype=np.int64)
    for j, w in enumerate(weights):
        f = mix(float(w), parts.teacher, parts.device)
        out[j] = int((f > f[pos]).sum() + (f[:pos] == f[pos]).sum())
    return out


def _device_scores(items: np.ndarray, logp: np.ndarray, intents: np.ndarray, d: np.ndarray,
                   intent_logp: np.ndarray, view: DeviceView, rule: DeviceMissing,
                   known: np.ndarray) -> np.ndarray:
    """The device's log-probability of each cloud item (`known`: `_known(items, view)`),
    estimated where it does not know it."""
    if known.all():
        return d[items]
    out = np.empty(len(items))
    out[known] = d[items[known]]
    unknown = ~known
    if unknown.any():
        if rule in ("teacher", "mixture"):
            out[unknown] = logp[unknown]
            return out
        tok = np.asarray(intents[unknown], dtype=np.int64)
        sizes = view.log_intent_size
        if len(sizes) == len(intent_logp) and tok.min() >= 0 and tok.max() < len(sizes):
            by_token = intent_logp - sizes  # one estimate per token, 0 (padding) none
            by_token[0] = -np.inf
            out[unknown] = by_token[tok]
        else:
            valid = (tok > 0) & (tok < len(intent_logp))
            size = np.where(tok < len(sizes), sizes[np.clip(tok, 0, len(sizes) - 1)], 0.0)
            out[unknown] = np.where(valid, intent_logp[np.where(valid, tok, 0)] - size, -np.inf)
    return out


def _top(scores: np.ndarray, n: int) -> np.ndarray:
    """The n best finite entries, best first (fewer when fewer are finite)."""
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    if n <= len(scores):  # the n best, when all are finite, as below without counting
        neg = -scores
        top = np.argpartition(neg, n - 1)[:n]
        best = neg[top]
        order = best.argsort(kind="stable")
        if -np.inf < best[order[0]] and best[order[-1]] < np.inf:  # all finite: NaN sorts last
            return top[order]
    n = min(n, int(np.count_nonzero(np.isfinite(scores))))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-scores, n - 1)[:n]
    return top[np.argsort(-scores[top], kind="stable")]


def _in(items: np.ndarray, among: np.ndarray | None) -> np.ndarray:
    """`np.isin(items, among)`; ids of a catalog are looked up in a table, without the
    overhead of np.isin's own (an eighth of its time for a cloud answer against a history)."""
    if among is None or len(among) == 0 or len(items) == 0:
        return np.zeros(len(items), dtype=bool)
    items, among = np.asarray(items), np.asarray(among)
    if items.dtype.kind in "iu" and among.dtype.kind in "iu":
        lo, hi = min(items.min(), among.min()), max(items.max(), among.max())
        if lo >= 0 and hi < max(1 << 16, 8 * (len(items) + len(among))):
            table = np.zeros(int(hi) + 1, dtype=bool)
            table[among] = True
            return table[items]
    return np.isin(items, among)
