"""Hard-example miners on concrete score vectors (the gateway's wiring of them: test_gateway_miners.py)."""

from __future__ import annotations

import math

import pytest
from edgeloop_common.mining import (
    ConfidenceMiner,
    CrossEntropyMiner,
    EntropyMiner,
    HardExampleVerdict,
    IBTMiner,
    NoHardExamples,
    create_miner,
    normalized_entropy,
)

NO_STATS: dict[str, float] = {}


# -- confidence ---------------------------------------------------------------------------------------------------


def test_confidence_miner_flags_a_top_score_below_the_threshold_and_says_so() -> None:
    verdict = ConfidenceMiner(0.8).assess({"cat": 0.58, "dog": 0.42}, NO_STATS)
    assert verdict.hard is True
    assert verdict.reason == "confidence 0.58 < 0.80"


def test_confidence_miner_passes_a_confident_prediction() -> None:
    verdict = ConfidenceMiner(0.8).assess({"cat": 0.07, "dog": 0.93}, NO_STATS)
    assert verdict.hard is False and verdict.reason is None


def test_confidence_at_the_threshold_is_not_hard_and_a_hair_below_shows_enough_digits() -> None:
    assert ConfidenceMiner(0.8).assess({"cat": 0.8, "dog": 0.2}, NO_STATS).hard is False
    verdict = ConfidenceMiner(0.8).assess({"cat": 0.7999, "dog": 0.2001}, NO_STATS)
    assert verdict.hard is True and verdict.reason == "confidence 0.7999 < 0.8000"


# -- entropy and Sedna's cross-entropy ----------------------------------------------------------------------------


def test_normalized_entropy_of_known_vectors() -> None:
    assert normalized_entropy([0.5, 0.5]) == pytest.approx(1.0)
    assert normalized_entropy([1.0, 0.0]) == pytest.approx(0.0)
    assert normalized_entropy([0.25, 0.25, 0.25, 0.25]) == pytest.approx(1.0)
    # H(0.9, 0.1) = -(0.9 ln 0.9 + 0.1 ln 0.1) = 0.32508 nats; / ln 2 = 0.46900
    assert normalized_entropy([0.9, 0.1]) == pytest.approx(0.46900, abs=1e-5)
    assert normalized_entropy([1.0]) == 0.0


def test_entropy_miner_flags_spread_out_scores() -> None:
    # three classes, H = 1.0297 nats, / ln 3 = 0.9372
    verdict = EntropyMiner(0.7).assess({"cat": 0.5, "dog": 0.3, "fox": 0.2}, NO_STATS)
    assert verdict.hard is True
    assert verdict.reason == "normalized entropy 0.94 > 0.70"


def test_entropy_miner_passes_peaked_scores() -> None:
    assert EntropyMiner(0.7).assess({"cat": 0.9, "dog": 0.1}, NO_STATS).hard is False  # 0.469
    assert EntropyMiner(0.7).assess({"cat": 0.96, "dog": 0.02, "fox": 0.02}, NO_STATS).hard is False


def test_entropy_flags_what_confidence_does_not_with_many_classes() -> None:
    # top score 0.82 is confident enough, but the rest is spread over nine classes
    scores = {"top": 0.82, **{f"c{i}": 0.02 for i in range(9)}}
    assert ConfidenceMiner(0.8).assess(scores, NO_STATS).hard is False
    # H = -(0.82 ln 0.82 + 9 * 0.02 ln 0.02) = 0.8669 nats; / ln 10 = 0.3765
    assert normalized_entropy(list(scores.values())) == pytest.approx(0.3765, abs=1e-4)
    assert EntropyMiner(0.35).assess(scores, NO_STATS).hard is True
    assert EntropyMiner(0.40).assess(scores, NO_STATS).hard is False


def test_cross_entropy_miner_is_sednas_filter() -> None:
    # Sedna: confidence_score = 1 + sum(p log p) / log K; hard when below the threshold
    scores = {"cat": 0.6, "dog": 0.4}
    sedna_score = 1 + (0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / math.log(2)
    assert sedna_score == pytest.approx(0.029, abs=1e-3)
    verdict = CrossEntropyMiner(0.5).assess(scores, NO_STATS)
    assert verdict.hard is True and verdict.reason == "cross-entropy certainty 0.03 < 0.50"
    assert CrossEntropyMiner(0.5).assess({"cat": 0.99, "dog": 0.01}, NO_STATS).hard is False  # 0.919


# -- IBT (Sedna IBTFilter adapted to classification) -------------------------------------------------------------


def test_ibt_two_classes_flags_an_uncertain_decision() -> None:
    # each class decision has confidence max(p, 1 - p) = 0.6 <= 0.8: 2 of 2 uncertain, share 1.0 >= 1 - 0.5
    verdict = IBTMiner(threshold_img=0.5, threshold_box=0.8).assess({"cat": 0.6, "dog": 0.4}, NO_STATS)
    assert verdict.hard is True
    assert verdict.reason == "IBT: 2 of 2 class decisions uncertain (confidence <= 0.8), share 1.00 >= 0.50"


def test_ibt_two_classes_passes_a_confident_decision() -> None:
    # 0.95 and 0.05 are both confident decisions (0.95 each): none uncertain
    assert IBTMiner(threshold_img=0.5, threshold_box=0.8).assess({"cat": 0.95, "dog": 0.05}, NO_STATS).hard is False


def test_ibt_counts_uncertain_classes_against_threshold_img() -> None:
    # decisions: 0.7 (0.7), 0.25 (0.75), 0.05 (0.95) -> 2 of 3 uncertain at box 0.8, share 0.667
    scores = {"cat": 0.7, "dog": 0.25, "fox": 0.05}
    assert IBTMiner(threshold_img=0.5, threshold_box=0.8).assess(scores, NO_STATS).hard is True  # 0.667 >= 0.5
    assert IBTMiner(threshold_img=0.2, threshold_box=0.8).assess(scores, NO_STATS).hard is False  # 0.667 < 0.8
    # a stricter box threshold finds one uncertain class only: 1/3 < 0.5
    assert IBTMiner(threshold_img=0.5, threshold_box=0.72).assess(scores, NO_STATS).hard is False


def test_ibt_keeps_sednas_inclusive_comparisons() -> None:
    # confidence exactly threshold_box counts as uncertain, a share exactly 1 - threshold_img is hard
    verdict = IBTMiner(threshold_img=0.5, threshold_box=0.75).assess({"cat": 0.75, "dog": 0.25}, NO_STATS)
    assert verdict.hard is True


@pytest.mark.parametrize(
    "miner", [ConfidenceMiner(), EntropyMiner(), CrossEntropyMiner(), IBTMiner()], ids=lambda m: type(m).__name__
)
@pytest.mark.parametrize("scores", [{}, {"cat": 1.3, "dog": -0.3}], ids=["empty", "not-probabilities"])
def test_miners_do_not_judge_what_is_not_a_probability_vector(miner: object, scores: dict[str, float]) -> None:
    verdict = miner.assess(scores, NO_STATS)  # type: ignore[attr-defined]
    assert verdict.hard is False and verdict.reason is None


def test_a_threshold_outside_0_1_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"confidence threshold must be within 0\.\.1, not 1\.5"):
        ConfidenceMiner(1.5)
    with pytest.raises(ValueError, match="unknown hard-example miner 'magic'"):
        create_miner("magic")  # type: ignore[arg-type]


def test_create_miner_builds_the_named_miner_with_its_thresholds() -> None:
    assert isinstance(create_miner("none"), NoHardExamples)
    assert create_miner("confidence", confidence_threshold=0.6) == ConfidenceMiner(0.6)
    assert create_miner("entropy", entropy_threshold=0.5) == EntropyMiner(0.5)
    assert create_miner("cross_entropy", cross_entropy_threshold=0.4) == CrossEntropyMiner(0.4)
    assert create_miner("ibt", ibt_threshold_img=0.3, ibt_threshold_box=0.9) == IBTMiner(0.3, 0.9)
    assert NoHardExamples().assess({"cat": 0.5, "dog": 0.5}, NO_STATS) == HardExampleVerdict(hard=False)
