"""Concept drift on labeled outcomes: ADWIN (river) over 1/0 correctness of a model's predictions at a site.

Feature windows see a change in the inputs; only labels show that the same
inputs now mean something else. Each labeled sample adds ``label ==
predicted_label`` to an ADWIN detector; a change that lowers the estimated
accuracy is an alarm. A change upwards is not (the model got better), and a
new model version starts a new detector, since its accuracy is its own.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from river.drift import ADWIN as _RiverADWIN

ADWIN: Callable[..., Any] = _RiverADWIN  # river is untyped
RECENT_LABELS = 100  # the accuracy reported as "after" a change, and which tells a drop from a rise


@dataclass(frozen=True)
class AccuracyDrop:
    accuracy_before: float  # ADWIN's estimate just before it found the change
    accuracy_after: float  # over the last RECENT_LABELS labels
    window_size: int  # ADWIN's window after the cut
    labels_seen: int

    @property
    def drop(self) -> float:
        return self.accuracy_before - self.accuracy_after


class AccuracyMonitor:
    """ADWIN on the correctness of one (model, site), for the version it currently watches."""

    def __init__(self, model_version: int, *, delta: float, clock: int) -> None:
        self.model_version = model_version
        self.delta = delta
        self.clock = clock
        self.labels_seen = 0
        self.correct_seen = 0
        self.drops_seen = 0
        self._adwin = ADWIN(delta=delta, clock=clock)
        self._recent: deque[int] = deque(maxlen=RECENT_LABELS)

    def add(self, correct: bool) -> AccuracyDrop | None:
        """Feed one labeled outcome; an :class:`AccuracyDrop` when ADWIN found a change and accuracy fell."""
        outcome = 1 if correct else 0
        accuracy_before = float(self._adwin.estimation)
        self._adwin.update(outcome)
        self._recent.append(outcome)
        self.labels_seen += 1
        self.correct_seen += outcome
        if not self._adwin.drift_detected:
            return None
        # ADWIN keeps a share of the old labels in its window after the cut; the last labels say which way it went.
        accuracy_recent = sum(self._recent) / len(self._recent)
        if accuracy_recent >= accuracy_before:
            return None  # accuracy rose: the model got better, not a drift to act on
        self.drops_seen += 1
        return AccuracyDrop(
            accuracy_before=accuracy_before,
            accuracy_after=accuracy_recent,
            window_size=int(self._adwin.width),
            labels_seen=self.labels_seen,
        )

    @property
    def accuracy(self) -> float:
        """ADWIN's estimate: the mean correctness over its current window."""
        return float(self._adwin.estimation)

    @property
    def window_size(self) -> int:
        return int(self._adwin.width)
