"""Hard-example miners: which classifications a person should label (the cloud gateway and the edge agent).

Each miner implements :class:`HardExampleMiner`: class scores in (a probability per class, summing to 1), a
:class:`HardExampleVerdict` out, with the reason when hard. The gateway puts the verdict into
``InferenceCompleted.hard_example`` / ``hard_example_reason``; ingest keeps hard examples without a label in
its labeling queue. The edge agent asks the deep cloud model about the hard ones (docs/edge.md).

* ``confidence``: the top score is below a threshold.
* ``entropy``: the normalised Shannon entropy of the scores, H(p) / log K, is above a threshold.
* ``cross_entropy``: KubeEdge Sedna's ``CrossEntropyFilter``: 1 + sum(p log p) / log K (that is, 1 minus the
  normalised entropy) is below a threshold -- the same test as ``entropy`` with the threshold 1 - t, kept
  for those who come with Sedna settings.
* ``ibt``: KubeEdge Sedna's ``IBTFilter`` (image-box-thresholds), adapted from detection to classification
  (see :class:`IBTMiner`).

Scores outside [0, 1] or an empty score vector are not judged (not hard, as in Sedna's filters); the
gateway has already refused scores that are not probabilities. A picture with nothing to classify (too dark,
blank) is never a hard example: the caller does not ask the miner about it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol


@dataclass(frozen=True)
class HardExampleVerdict:
    """Whether a classification is a hard example, and why (``reason`` only when hard)."""

    hard: bool
    reason: str | None = None


class HardExampleMiner(Protocol):
    """Judges one classification: class scores (probabilities) and the picture's statistics in, a verdict out."""

    def assess(self, scores: dict[str, float], image_stats: dict[str, float]) -> HardExampleVerdict: ...


class NoHardExamples:
    """The ``none`` miner: nothing is a hard example."""

    def assess(self, scores: dict[str, float], image_stats: dict[str, float]) -> HardExampleVerdict:
        return HardExampleVerdict(hard=False)


MinerName = Literal["none", "confidence", "entropy", "cross_entropy", "ibt"]
NOT_HARD = HardExampleVerdict(hard=False)


def _probabilities(scores: Mapping[str, float]) -> list[float] | None:
    """The scores as a list, or None when there is nothing a miner can judge."""
    values = [float(score) for score in scores.values()]
    if not values or not all(0.0 <= value <= 1.0 for value in values):
        return None
    return values


def normalized_entropy(probabilities: list[float]) -> float:
    """H(p) / log K in [0, 1]: 0 when one class has it all, 1 when every class is equally likely."""
    if len(probabilities) < 2:
        return 0.0
    total = sum(probabilities)
    if total <= 0.0:
        return 0.0
    entropy = -sum((p / total) * math.log(p / total) for p in probabilities if p > 0.0)
    return min(1.0, max(0.0, entropy / math.log(len(probabilities))))


def _pair(value: float, threshold: float) -> tuple[str, str]:
    """Both numbers with two decimals, or as many more as it takes to tell them apart."""
    for digits in range(2, 7):
        shown = f"{value:.{digits}f}", f"{threshold:.{digits}f}"
        if shown[0] != shown[1] or value == threshold:
            return shown
    return f"{value!r}", f"{threshold!r}"


def _check_unit(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within 0..1, not {value}")
    return value


@dataclass(frozen=True)
class ConfidenceMiner:
    """Hard when the top score is below ``threshold``."""

    threshold: float = 0.8

    def __post_init__(self) -> None:
        _check_unit("the confidence threshold", self.threshold)

    def assess(self, scores: dict[str, float], image_stats: dict[str, float]) -> HardExampleVerdict:
        probabilities = _probabilities(scores)
        if probabilities is None:
            return NOT_HARD
        top = max(probabilities)
        if top >= self.threshold:
            return NOT_HARD
        shown, limit = _pair(top, self.threshold)
        return HardExampleVerdict(hard=True, reason=f"confidence {shown} < {limit}")


@dataclass(frozen=True)
class EntropyMiner:
    """Hard when the normalised Shannon entropy of the scores is above ``threshold``."""

    threshold: float = 0.7

    def __post_init__(self) -> None:
        _check_unit("the entropy threshold", self.threshold)

    def assess(self, scores: dict[str, float], image_stats: dict[str, float]) -> HardExampleVerdict:
        probabilities = _probabilities(scores)
        if probabilities is None:
            return NOT_HARD
        entropy = normalized_entropy(probabilities)
        if entropy <= self.threshold:
            return NOT_HARD
        shown, limit = _pair(entropy, self.threshold)
        return HardExampleVerdict(hard=True, reason=f"normalized entropy {shown} > {limit}")


@dataclass(frozen=True)
class CrossEntropyMiner:
    """Sedna's ``CrossEntropyFilter``: hard when 1 + sum(p log p) / log K is below ``threshold`` (default 0.5)."""

    threshold: float = 0.5

    def __post_init__(self) -> None:
        _check_unit("the cross-entropy threshold", self.threshold)

    def assess(self, scores: dict[str, float], image_stats: dict[str, float]) -> HardExampleVerdict:
        probabilities = _probabilities(scores)
        if probabilities is None or len(probabilities) < 2:
            return NOT_HARD
        certainty = 1.0 - normalized_entropy(probabilities)
        if certainty >= self.threshold:
            return NOT_HARD
        shown, limit = _pair(certainty, self.threshold)
        return HardExampleVerdict(hard=True, reason=f"cross-entropy certainty {shown} < {limit}")


@dataclass(frozen=True)
class IBTMiner:
    """KubeEdge Sedna's IBT (image-box-thresholds) filter, adapted from detection boxes to class scores.

    Sedna, for object detection: a box is uncertain when its score is at most ``threshold_box``; the image is
    hard when the share of uncertain boxes is at least ``1 - threshold_img``.

    Here each class is a "box". Its confidence is not the raw class score but the confidence of the
    model's yes/no decision about that class, ``max(p, 1 - p)``: a class scored 0.02 is a confident "not
    this class", just as one scored 0.98 is a confident "this class". (With raw softmax scores every
    runner-up class would count as an uncertain box -- with two classes exactly half of the boxes would
    always be at most 0.5 -- so every image would be judged alike.) A class is uncertain when that
    confidence is at most ``threshold_box``; the image is hard when the share of uncertain classes is at
    least ``1 - threshold_img``. Sedna's comparisons (``<=`` and ``>=``) are kept.

    With two classes both decisions have the same confidence, so IBT flags exactly the images whose top
    score is at most ``threshold_box``; with more classes it also weighs how many classes are in doubt.
    """

    threshold_img: float = 0.5
    threshold_box: float = 0.8

    def __post_init__(self) -> None:
        _check_unit("the IBT image threshold", self.threshold_img)
        _check_unit("the IBT box threshold", self.threshold_box)

    def assess(self, scores: dict[str, float], image_stats: dict[str, float]) -> HardExampleVerdict:
        probabilities = _probabilities(scores)
        if probabilities is None:
            return NOT_HARD
        uncertain = sum(1 for p in probabilities if max(p, 1.0 - p) <= self.threshold_box)
        share = uncertain / len(probabilities)
        required = 1.0 - self.threshold_img
        if share < required:
            return NOT_HARD
        shown, limit = _pair(share, required)
        return HardExampleVerdict(
            hard=True,
            reason=f"IBT: {uncertain} of {len(probabilities)} class decisions uncertain "
            f"(confidence <= {self.threshold_box:g}), share {shown} >= {limit}",
        )


def create_miner(
    name: MinerName,
    *,
    confidence_threshold: float = 0.8,
    entropy_threshold: float = 0.7,
    cross_entropy_threshold: float = 0.5,
    ibt_threshold_img: float = 0.5,
    ibt_threshold_box: float = 0.8,
) -> HardExampleMiner:
    """The miner the settings name; a threshold outside 0..1 stops start-up with the reason."""
    if name == "none":
        return NoHardExamples()
    if name == "confidence":
        return ConfidenceMiner(confidence_threshold)
    if name == "entropy":
        return EntropyMiner(entropy_threshold)
    if name == "cross_entropy":
        return CrossEntropyMiner(cross_entropy_threshold)
    if name == "ibt":
        return IBTMiner(threshold_img=ibt_threshold_img, threshold_box=ibt_threshold_box)
    raise ValueError(f"unknown hard-example miner {name!r}; choose none, confidence, entropy, cross_entropy or ibt")
