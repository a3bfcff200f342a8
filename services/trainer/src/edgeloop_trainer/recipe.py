"""How a version is built: the backbone, the input size and the blocks fine-tuned (no TensorFlow imported here).

The backbones: ``efficientnet-lite0`` (the default) and ``efficientnet-lite2`` carry ImageNet weights that ship
in installed packages (:mod:`edgeloop_trainer.backbones`); ``small-cnn`` trains from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeloop_trainer.backbones import PRETRAINED_BACKBONES, get_backbone

SMALL_CNN = "small-cnn"
DEFAULT_BACKBONE = "efficientnet-lite0"
BACKBONE_NAMES = (*PRETRAINED_BACKBONES, SMALL_CNN)
SMALL_CNN_IMAGE_SIZE = 128
SMALL_CNN_EPOCHS, SMALL_CNN_LEARNING_RATE = 15, 1e-3
HEAD_EPOCHS, HEAD_LEARNING_RATE = 40, 1e-3
# ``edgeloop train`` keeps backbone features under the model base, in a hidden folder no server looks at.
FEATURE_CACHE_DIR = ".feature-cache"


@dataclass(frozen=True)
class Recipe:
    """How a version is built: the backbone, the input size (None: the backbone's own) and the blocks fine-tuned."""

    backbone: str = DEFAULT_BACKBONE
    image_size: int | None = None
    fine_tune: int = 0

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_NAMES:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONE_NAMES)}")
        if self.image_size is not None and self.image_size < 16:
            raise ValueError(f"image size must be at least 16 pixels, got {self.image_size}")
        if self.fine_tune < 0:
            raise ValueError(f"fine-tuned blocks must be 0 or more, got {self.fine_tune}")
        if self.fine_tune and not self.pretrained:
            raise ValueError("--fine-tune needs a pretrained backbone (the small CNN trains every layer anyway)")

    @property
    def pretrained(self) -> bool:
        return self.backbone != SMALL_CNN

    @property
    def size(self) -> int:
        """The input size: given, or the backbone's own (224 for Lite0, 260 for Lite2, 128 for the small CNN)."""
        if self.image_size is not None:
            return self.image_size
        if not self.pretrained:
            return SMALL_CNN_IMAGE_SIZE
        return get_backbone(self.backbone).input_size

    @property
    def default_epochs(self) -> int:
        """Epochs of a training from scratch: the head on fixed features needs more passes, each one cheap."""
        return HEAD_EPOCHS if self.pretrained else SMALL_CNN_EPOCHS

    @property
    def default_learning_rate(self) -> float:
        return HEAD_LEARNING_RATE if self.pretrained else SMALL_CNN_LEARNING_RATE

    def incremental(self, epochs: int, learning_rate: float) -> tuple[int, float]:
        """Epochs and learning rate of a warm start, from those of a training from scratch.

        A head on fixed features continues for half its epochs at its own rate (each epoch is milliseconds, and a
        gentler step barely moved it: measured in docs/closed-loop.md); the small CNN refines for a quarter of
        its epochs (at least 5) at a fifth of its rate, so that it does not forget.
        """
        if self.pretrained:
            return max(5, epochs // 2), learning_rate
        return max(5, epochs // 4), learning_rate / 5

    def description(self) -> dict[str, Any]:
        """What the metadata and the registry record of the recipe: enough to rebuild and to compare."""
        described: dict[str, Any] = {"name": self.backbone, "input_size": self.size, "fine_tuned_blocks": 0}
        if self.pretrained:
            backbone = get_backbone(self.backbone)
            described.update(
                weights_sha256=backbone.weights_sha256(),
                weights_package=backbone.package,
                feature_dim=backbone.feature_dim,
                fine_tuned_blocks=self.fine_tune,
            )
        return described


def recipe_of(metadata: dict[str, Any]) -> dict[str, Any]:
    """The recipe a version's ``edgeloop.json`` records (versions before backbones: the small CNN)."""
    recorded = metadata.get("backbone")
    if isinstance(recorded, dict):
        return recorded
    return {"name": SMALL_CNN, "input_size": metadata.get("image_size"), "fine_tuned_blocks": 0}
