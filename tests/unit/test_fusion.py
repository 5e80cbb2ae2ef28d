"""Collaborative fusion: the union, the rules for missing scores, and weight 0 = the device."""

import numpy as np
import pytest

from tandem_contract.fusion import (
    CloudCandidates,
    DeviceView,
    FusionConfig,
    device_log_probs,
    fuse,
    fusion_parts,
    intent_log_probs,
    log_softmax,
    target_positions,
)

pytestmark = pytest.mark.unit

# 8 items (ids 1..8) in 3 intents; item 8 is new: the device's bundle does not know it.
ITEM_INTENT = np.array([0, 1, 1, 2, 2, 3, 3, 1, 2])
KNOWN = np.array([0, 1, 1, 1, 1, 1, 1, 1, 0], dtype=bool)
VIEW = DeviceView.build(KNOWN, np.where(KNOWN, ITEM_INTENT, 0), n_intents=3)
SCORES = np.array([9.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, 7.0])  # padding and item 8 ignored
LOGITS = np.array([5.0, 0.0, np.log(2.0), 0.0])  # intent 2 twice as likely as 1 or 3


def cloud(items, logp, catalog=8):
    items = np.asarray(items)
    return CloudCandidates(items, np.asarray(logp, dtype=np.float64), ITEM_INTENT[items], catalog)


def test_device_log_probs_cover_known_items_only():
    d = device_log_probs(SCORES, VIEW)
    assert d[0] == -np.inf and d[8] == -np.inf
    assert np.exp(d[1:8]).sum() == pytest.approx(1.0)
    assert d[1] - d[2] == pytest.approx(1.0)


def test_union_adds_the_devices_own_top_items():
    d, il = device_log_probs(SCORES, VIEW), intent_log_probs(LOGITS)
    c = cloud([5, 6], [-1.0, -2.0])
    items, _ = fuse(d, il, VIEW, c, FusionConfig(weight=0.5, device_top=2))
    assert set(items.tolist()) == {5, 6, 1, 2}  # item 1, the device's best, survives a miss
    items, _ = fuse(d, il, VIEW, c, FusionConfig(weight=0.5, device_top=0))
    assert set(items.tolist()) == {5, 6}  # device_top 0: the cloud's candidates only


def test_weight_zero_is_exactly_the_device_alone():
    d, il = device_log_probs(SCORES, VIEW), intent_log_probs(LOGITS)
    c = cloud([7, 6, 5], [-0.5, -1.0, -1.5])
    items, scores = fuse(d, il, VIEW, c, FusionConfig(weight=0.0, device_top=3),
                         exclude=np.array([2]))
    assert items[:3].tolist() == [1, 3, 4]  # the device's top 3 without the consumed item 2
    assert scores[0] == pytest.approx(d[1])


def test_weight_one_is_the_teacher_with_its_floor_for_device_items():
    d, il = device_log_probs(SCORES, VIEW), intent_log_probs(LOGITS)
    c = cloud([7, 6], [-0.5, -3.0])
    items, scores = fuse(d, il, VIEW, c, FusionConfig(weight=1.0, device_top=1,
                                                      cloud_missing="floor"))
    assert items.tolist() == [7, 6, 1]
    assert scores.tolist() == pytest.approx([-0.5, -3.0, -3.0])


def test_mass_rule_spreads_the_teachers_remaining_probability():
    d, il = device_log_probs(SCORES, VIEW), intent_log_probs(LOGITS)
    c = cloud([7, 6], [np.log(0.5), np.log(0.2)], catalog=8)
    parts = fusion_parts(d, il, VIEW, c, FusionConfig(device_top=1, cloud_missing="mass"))
    assert parts.items.tolist() == [7, 6, 1]
    assert parts.teacher[2] == pytest.approx(np.log(0.3 / 6))  # 30% left over 6 other items


def test_new_item_scored_through_its_intent_or_the_teacher():
    d, il = device_log_probs(SCORES, VIEW), intent_log_probs(LOGITS)
    c = cloud([8, 3], [-1.0, -2.0])
    parts = fusion_parts(d, il, VIEW, c, FusionConfig(device_top=0, device_missing="intent"))
    # intent 2 has probability 1/2 and holds 2 known items plus the newcomer: log(1/2) - log 3
    assert parts.device[0] == pytest.approx(np.log(0.5) - np.log(3.0))
    assert parts.device[1] == pytest.approx(d[3])
    parts = fusion_parts(d, il, VIEW, c, FusionConfig(device_top=0, device_missing="teacher"))
    assert parts.device[0] == pytest.approx(-1.0)


def test_mixture_gives_new_items_the_teachers_mass_and_known_items_the_rest():
    d, il = device_log_probs(SCORES, VIEW), intent_log_probs(LOGITS)
    c = cloud([8, 3], [np.log(0.4), np.log(0.1)])  # the teacher puts 40% on new item 8
    parts = fusion_parts(d, il, VIEW, c, FusionConfig(device_top=2, device_missing="mixture"))
    assert parts.items.tolist() == [8, 3, 1, 2]
    assert parts.device[0] == pytest.approx(np.log(0.4))
    # known items keep the device's opinion, scaled to the 60% the teacher leaves them
    assert parts.device[1:].tolist() == pytest.approx((d[[3, 1, 2]] + np.log(0.6)).tolist())
    assert np.exp(parts.device[1:]).sum() + 0.4 <= 1.0 + 1e-9
    # with weight 0 the new item outranks the device's best (0.6 * 0.63 < 0.4): under "teacher"
    # its log(0.4) would sit below the device's unscaled log(0.63)
    for rule, first in (("mixture", 8), ("teacher", 1)):
        items, _ = fuse(d, il, VIEW, c, FusionConfig(weight=0.0, device_top=2,
                                                     device_missing=rule))
        assert items[0] == first


def test_device_temperature_flattens_the_device_onto_the_teachers_scale():
    d, il = device_log_probs(SCORES, VIEW), intent_log_probs(LOGITS)
    c = cloud([8, 3], [np.log(0.3), np.log(0.1)])  # the teacher puts 30% on new item 8
    cfg = FusionConfig(weight=0.0, device_top=2, device_missing="mixture")
    assert fuse(d, il, VIEW, c, cfg)[0][0] == 1  # 0.7 * 0.63: the device's best comes first
    hot = FusionConfig(weight=0.0, device_top=2, device_missing="mixture", device_temperature=2.0)
    parts = fusion_parts(d, il, VIEW, c, hot)
    # known items 1..7 score 5, 4, ..., -1: at T=2 item 1 has e^2.5 / sum_k e^(s_k / 2)
    z = np.exp(np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0]) / 2)
    assert parts.device[2] == pytest.approx(np.log(z[0] / z.sum()) + np.log(0.7))
    items, _ = fuse(d, il, VIEW, c, hot)
    assert items[0] == 8  # 0.7 * 0.41 < 0.3: the new item now leads
    assert [i for i in items.tolist() if i != 8] == [1, 2, 3]  # the device's order is kept
    assert hot.serving()["device_temperature"] == 2.0
    assert FusionConfig.from_serving(hot.serving()) == hot
    with pytest.raises(ValueError, match="device_temperature"):
        FusionConfig(device_temperature=0.0)


def test_mixed_scores_are_the_weighted_sum_of_log_probabilities():
    d, il = device_log_probs(SCORES, VIEW), intent_log_probs(LOGITS)
    c = cloud([4, 3], log_softmax(np.array([2.0, 0.0])))
    items, scores = fuse(d, il, VIEW, c, FusionConfig(weight=0.3, device_top=0))
    expected = {4: 0.3 * c.logp[0] + 0.7 * d[4], 3: 0.3 * c.logp[1] + 0.7 * d[3]}
    assert dict(zip(items.tolist(), scores.tolist(), strict=True)) == pytest.approx(expected)


def test_empty_answer_leaves_the_device_ranking():
    d, il = device_log_probs(SCORES, VIEW), intent_log_probs(LOGITS)
    items, _ = fuse(d, il, VIEW, CloudCandidates.empty(), FusionConfig(weight=0.7, device_top=3))
    assert items.tolist() == [1, 2, 3]


def test_target_positions_match_the_ranking_fuse_returns():
    rng = np.random.default_rng(0)
    weights = np.array([0.0, 0.2, 0.5, 0.9, 1.0])
    for _ in range(50):
        scores = rng.normal(size=9).round(1)  # rounding makes ties, which must agree too
        items = rng.choice(np.arange(1, 9), size=4, replace=False)
        c = cloud(items, np.sort(rng.normal(size=4).round(1))[::-1] - 3)
        d, il = device_log_probs(scores, VIEW), intent_log_probs(rng.normal(size=4))
        for rule in ("floor", "mass"):
            cfg = FusionConfig(device_top=3, cloud_missing=rule)
            parts = fusion_parts(d, il, VIEW, c, cfg, exclude=np.array([items[0]]))
            for target in range(1, 9):
                pos = target_positions(parts, weights, target)
                for w, p in zip(weights, pos, strict=True):
                    ranked, _ = fuse(d, il, VIEW, c, FusionConfig(
                        float(w), 3, rule), exclude=np.array([items[0]]))  # type: ignore[arg-type]
                    hit = np.flatnonzero(ranked == target)
                    assert p == (hit[0] if len(hit) else -1)


def test_serving_round_trip():
    cfg = FusionConfig(0.3, 20, "mass", "teacher")
    assert FusionConfig.from_serving(cfg.serving()) == cfg
    assert FusionConfig.from_serving(cfg.serving(), weight=0.0).weight == 0.0
    assert FusionConfig.from_serving(cfg.serving(), weight=None).weight == 0.3


def test_a_teacher_share_needs_a_gain_that_holds_up():
    # Evaluation's rule, not the SDK's: skipped where only the edge extra is installed.
    pytest.importorskip("torch", reason="tandemrec.eval needs torch (the train extra)")
    from tandemrec.eval.modes import significant_gain

    rng = np.random.default_rng(1)
    base = rng.integers(0, 30, size=400)
    better = np.where(rng.random(400) < 0.3, 0, base)  # 30% of the users' targets move to rank 0
    assert significant_gain(better, base, 0.95)
    flat = np.full(400, 5)
    lucky = flat.copy()
    lucky[0] = 0  # one user of 400 better: a gain on the mean, but not one to bet the device on
    assert not significant_gain(lucky, flat, 0.95)
    assert significant_gain(lucky, flat, 0.0)
    assert not significant_gain(base, base, 0.0)


def test_within_tolerance_the_setting_that_ranks_new_targets_best_is_chosen():
    pytest.importorskip("torch", reason="tandemrec.eval needs torch (the train extra)")
    from tandemrec.eval.modes import _freshest

    # 4 users, the last two with new targets; ranks per setting (0 = first place).
    ranks = np.array([[0, 0, 50, 50],   # best for all: 2 hits of 4 (NDCG 0.5), new ones missed
                      [0, 50, 0, 50],   # as good for all (0.5), one new target first
                      [50, 50, 0, 0]])  # as good for all too, both new targets first
    scores = np.array([0.5, 0.5, 0.5])
    new = np.array([False, False, True, True])
    assert _freshest(ranks, scores, new, 0.0) == 0  # no tolerance: the first best
    assert _freshest(ranks, scores, new, 0.01) == 2
    assert _freshest(ranks, scores, np.zeros(4, dtype=bool), 0.01) == 0  # no new targets
    # past the tolerance for all users, the new targets do not buy the setting
    assert _freshest(ranks, np.array([0.5, 0.5, 0.49]), new, 0.01) == 1
    assert _freshest(ranks, np.array([0.5, 0.5, 0.496]), new, 0.01) == 2
