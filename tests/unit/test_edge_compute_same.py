"""The device's faster per-request code gives the same bits as the code it replaced (issue 24,
item 3): fusion, its ranking and the upstream request.

`fuse` ranks what a device serves and what offline evaluation scores, so the quality figures
hold only if every array it returns is unchanged, tie order included. The helpers as they were
before the change are kept here; each test runs fusion with them patched in and without, on
random inputs built to hit the rare paths (ties, ids past the catalog, unknown items, empty
answers, every rule). The student's graph has its own test (tests/core/test_onnx_export.py).
"""

from unittest import mock

import numpy as np
import pytest

from tandem_contract import fusion
from tandem_contract.fusion import CloudCandidates, DeviceView, FusionConfig
from tandem_contract.intents import top_intents
from tandem_contract.request import build_request

pytestmark = pytest.mark.unit


# The helpers before the change (tandem_contract/fusion.py at 456b893).
def old_log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    z = x - np.max(x)
    return z - np.log(np.exp(z).sum())


def old_intent_log_probs(intent_logits):
    x = np.asarray(intent_logits, dtype=np.float64).copy()
    x[0] = -np.inf
    return old_log_softmax(x)


def old_device_log_probs(item_scores, view):
    s = np.full(len(view.known), -np.inf)
    n = min(len(item_scores), len(view.known))
    s[:n] = np.where(view.known[:n], item_scores[:n], -np.inf)
    return old_log_softmax(s)


def old_known(items, view):
    inside = items < len(view.known)
    known = np.zeros(len(items), dtype=bool)
    known[inside] = view.known[items[inside]]
    return known


def old_device_scores(items, logp, intents, d, intent_logp, view, rule, known=None):
    """The rule item by item (the old code said it with masks)."""
    sizes, out = view.log_intent_size, []
    for i, item in enumerate(items.tolist()):
        tok = int(intents[i])
        if item < len(view.known) and view.known[item]:
            out.append(d[item])
        elif rule in ("teacher", "mixture"):
            out.append(logp[i])
        elif 0 < tok < len(intent_logp):
            out.append(intent_logp[tok] - (sizes[tok] if tok < len(sizes) else 0.0))
        else:
            out.append(-np.inf)
    return np.array(out, dtype=np.float64)


def old_top(scores, n):
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    n = min(n, int(np.isfinite(scores).sum()))
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-scores, n - 1)[:n]
    return top[np.argsort(-scores[top], kind="stable")]


def old_in(items, among):
    if among is None or len(among) == 0 or len(items) == 0:
        return np.zeros(len(items), dtype=bool)
    return np.isin(items, among)


OLD = {"_known": old_known, "_device_scores": old_device_scores, "_top": old_top,
       "_in": old_in}


def same(a, b) -> bool:
    """Equal to the bit: values (NaN where NaN), dtype and order."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


def case(rng: np.random.Generator):
    """One random request: catalog, bundle, student outputs, cloud answer, history."""
    n, k = int(rng.integers(5, 400)), int(rng.integers(2, 30))
    item_intent = rng.integers(0, k + 1, n + 1)
    known = rng.random(n + 1) < rng.uniform(0.5, 1.0)
    if rng.random() < 0.3:  # a bundle that knows its whole catalog (DeviceView.knows_all)
        known[:] = True
    view = DeviceView.build(known, item_intent, k)
    scores = rng.normal(size=n + 1 + int(rng.integers(-2, 3))).astype(np.float32)
    if rng.random() < 0.4:  # int8 models tie: a few distinct values only
        scores = np.round(scores * 2) / 2
    elif rng.random() < 0.5:  # or now and then
        scores[rng.integers(0, len(scores), 6)] = scores[rng.integers(0, len(scores), 6)]
    logits = rng.normal(size=k + 1).astype(np.float32)
    size = n + int(rng.integers(0, 20))  # the cloud may know items newer than the bundle
    c = int(rng.integers(0, min(size, 300) + 1))
    items = rng.permutation(np.arange(1, size + 1))[:c]
    logp = np.sort(np.log(rng.dirichlet(np.ones(size)))[:c])[::-1]
    if rng.random() < 0.3:
        logp = np.round(logp)  # ties on the teacher's side
    intents = rng.integers(0, k + 3, c)  # tokens past the intent head too
    cloud = CloudCandidates(items.astype(np.int64), logp, intents, size)
    history = rng.integers(-3, size + 5, int(rng.integers(0, 60)))
    cfg = FusionConfig(weight=float(rng.choice([0.0, 0.3, 1.0])),
                       device_top=int(rng.integers(0, 40)),
                       cloud_missing=str(rng.choice(["floor", "mass"])),  # type: ignore[arg-type]
                       device_missing=str(rng.choice(["intent", "teacher", "mixture"])),  # type: ignore[arg-type]
                       device_temperature=float(rng.choice([1.0, 1.0, 1.7])))
    return view, scores, logits, cloud, history, cfg


def reference_fuse(d, il, view, cloud, cfg, exclude):
    """`fuse` written plainly, as before the faster code: copies, np.isin, concatenation, the
    helpers above and the stable sort; (items, teacher, device) of the union and the ranking."""
    t = cfg.device_temperature
    d = d.copy() if t == 1 else old_log_softmax(d / t)
    d[0] = -np.inf
    if exclude is not None and len(exclude):
        h = np.asarray(exclude, dtype=np.int64)
        d[h[(h >= 0) & (h < len(d))]] = -np.inf
    keep = ~old_in(cloud.items, exclude)
    c_items, c_logp, c_intents = cloud.items[keep], cloud.logp[keep], cloud.intents[keep]
    own = old_top(d, cfg.device_top)
    own = own[~old_in(own, c_items)]
    floor = fusion._teacher_missing(cloud, cfg.cloud_missing)
    known = old_known(c_items, view)
    if cfg.device_missing == "mixture":
        d += fusion._known_share(c_logp, known)
    items = np.concatenate([c_items, own]).astype(np.int64)
    teacher = np.concatenate([c_logp, np.full(len(own), floor)])
    device = np.concatenate([old_device_scores(c_items, c_logp, c_intents, d, il, view,
                                               cfg.device_missing), d[own]])
    fused = fusion.mix(cfg.weight, teacher, device)
    order = np.argsort(-fused, kind="stable")
    return (items, teacher, device), (items[order], fused[order])


@pytest.mark.parametrize("seed", range(300))
def test_fusion_matches_the_plain_code(seed):
    view, scores, logits, cloud, history, cfg = case(np.random.default_rng(seed))
    d, il = fusion.device_log_probs(scores, view), fusion.intent_log_probs(logits)
    exclude = history if seed % 5 else None
    (items, teacher, device), (ranked, fused) = reference_fuse(d, il, view, cloud, cfg, exclude)
    parts = fusion.fusion_parts(d, il, view, cloud, cfg, exclude)
    for got, want in ((parts.items, items), (parts.teacher, teacher), (parts.device, device)):
        assert same(got, want)
    got_items, got_fused = fusion.fuse(d, il, view, cloud, cfg, exclude=exclude)
    assert same(got_items, ranked) and same(got_fused, fused)


@pytest.mark.parametrize("seed", range(300))
def test_fusion_is_unchanged_to_the_bit(seed):
    view, scores, logits, cloud, history, cfg = case(np.random.default_rng(seed))
    d, il = fusion.device_log_probs(scores, view), fusion.intent_log_probs(logits)
    assert same(d, old_device_log_probs(scores, view))
    assert same(il, old_intent_log_probs(logits))
    assert same(fusion.log_softmax(scores), old_log_softmax(scores))
    exclude = history if seed % 5 else None
    new_parts = fusion.fusion_parts(d, il, view, cloud, cfg, exclude)
    new_rank = fusion.fuse(d, il, view, cloud, cfg, exclude=exclude)
    with mock.patch.multiple(fusion, **OLD):
        old_parts = fusion.fusion_parts(d, il, view, cloud, cfg, exclude)
        old_rank = fusion.fuse(d, il, view, cloud, cfg, exclude=exclude)
    for field in ("items", "teacher", "device"):
        assert same(getattr(new_parts, field), getattr(old_parts, field)), field
    assert same(new_rank[0], old_rank[0]) and same(new_rank[1], old_rank[1])


@pytest.mark.parametrize("seed", range(100))
def test_membership_matches_isin(seed):
    rng = np.random.default_rng(seed)
    hi = int(rng.choice([10, 5000, 1 << 20]))
    items = rng.integers(-2 if seed % 3 == 0 else 0, hi, int(rng.integers(0, 50)))
    among = rng.integers(-2 if seed % 4 == 0 else 0, hi, int(rng.integers(0, 50)))
    assert same(fusion._in(items, among), old_in(items, among))


@pytest.mark.parametrize("seed", range(60))
def test_ranking_is_the_stable_sort(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=int(rng.integers(0, 300)))
    pool = np.array([0.0, -0.0, np.inf, -np.inf, 1.5, np.nan])
    hits = int(rng.choice([0, 1, 3, 40]))
    if len(x) and hits:
        x[rng.integers(0, len(x), hits)] = rng.choice(pool[: 5 if seed % 3 else 6], hits)
    order, ranked = fusion._ranked(x)
    expected = np.argsort(-x, kind="stable")
    assert same(order, expected)
    assert np.array_equal(ranked, x[expected], equal_nan=True)


def old_build_request(intent_logits, history, item_intents, *, top_m, coarse_len, k,
                      model_version):
    tokens, weights = top_intents(intent_logits, top_m)
    recent = history[-coarse_len:] if coarse_len > 0 else history[:0]
    coarse = item_intents[np.asarray(recent, dtype=np.int64)]
    coarse = coarse[coarse > 0]
    return (tuple(int(t) for t in tokens), tuple(round(float(w), 6) for w in weights),
            tuple(int(t) for t in coarse), int(k), model_version)


@pytest.mark.parametrize("seed", range(40))
def test_request_is_unchanged(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 500)), int(rng.integers(1, 300))
    item_intents = rng.integers(0, k + 1, n + 1)
    logits = rng.normal(size=k + 1).astype(np.float32 if seed % 2 else np.float64)
    history = rng.integers(0, n + 1, int(rng.integers(0, 80)))
    args = dict(top_m=int(rng.integers(1, 40)), coarse_len=int(rng.integers(0, 60)),
                k=int(rng.integers(1, 1000)), model_version="v")
    req = build_request(logits, history, item_intents, **args)
    got = (req.intent_tokens, req.intent_weights, req.coarse_history, req.k, req.model_version)
    want = old_build_request(logits, history, item_intents, **args)
    assert got == want
    assert [type(v) for v in got[0] + got[2]] == [int] * (len(got[0]) + len(got[2]))
    assert all(type(w) is float for w in got[1])


def test_vectorised_rounding_is_pythons():
    rng = np.random.default_rng(0)
    w = np.concatenate([rng.random(200_000), rng.dirichlet(np.ones(32), 500).ravel(),
                        (np.arange(2_000_000) + 0.5) / 1e6]).astype(np.float32)
    from tandem_contract.request import _round6

    assert _round6(w) == tuple(round(float(x), 6) for x in w)


def old_top_intents(intent_logits, m):
    logits = intent_logits[1:]
    idx = np.argsort(-logits)[:m]
    w = np.exp(logits[idx] - logits[idx].max())
    return idx + 1, (w / w.sum()).astype(np.float32)


@pytest.mark.parametrize("seed", range(40))
def test_top_intents_are_unchanged(seed):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=int(rng.integers(2, 300))) * 4
    if seed % 3 == 0:
        logits = np.round(logits)  # ties
    if seed % 5 == 0:
        logits[rng.integers(0, len(logits), 2)] = np.nan
    logits = logits.astype(np.float32 if seed % 2 else np.float64)
    m = int(rng.integers(1, len(logits) + 3))
    for got, want in zip(top_intents(logits, m), old_top_intents(logits, m), strict=True):
        assert same(got, want)
