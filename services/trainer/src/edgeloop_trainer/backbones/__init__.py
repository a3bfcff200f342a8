"""Pretrained backbones for the trainer: EfficientNet-Lite rebuilt in Keras from PyTorch checkpoints.

Importing this package does not import TensorFlow/Keras; :func:`build_efficientnet_lite` (and the models
the catalog builds) do, on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgeloop_trainer.backbones.catalog import (
    IMAGENET_CAT_CLASSES,
    IMAGENET_DOG_CLASSES,
    PRETRAINED_BACKBONES,
    Backbone,
    get_backbone,
)
from edgeloop_trainer.backbones.torch_weights import UnsafeWeightsError, read_torch_state_dict

if TYPE_CHECKING:
    from edgeloop_trainer.backbones.efficientnet_lite import LITE_VARIANTS, build_efficientnet_lite

__all__ = [
    "IMAGENET_CAT_CLASSES",
    "IMAGENET_DOG_CLASSES",
    "LITE_VARIANTS",
    "PRETRAINED_BACKBONES",
    "Backbone",
    "UnsafeWeightsError",
    "build_efficientnet_lite",
    "get_backbone",
    "read_torch_state_dict",
]

_LAZY = {"LITE_VARIANTS", "build_efficientnet_lite"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:  # keeps `import edgeloop_trainer.backbones` free of the Keras import
        from edgeloop_trainer.backbones import efficientnet_lite

        return getattr(efficientnet_lite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
