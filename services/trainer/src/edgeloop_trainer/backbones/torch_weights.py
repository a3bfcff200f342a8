"""Read a PyTorch ``state_dict`` checkpoint into numpy arrays, without torch and without running its pickle.

A ``.pth`` file is a pickle, and unpickling runs whatever callables the file names. This reader resolves
only an explicit allow-list of globals (``collections.OrderedDict`` and torch's tensor/storage rebuild
names, each mapped to a numpy stand-in defined here) and refuses everything else with
:class:`UnsafeWeightsError` before anything is called. Nothing from torch is ever imported.

Both on-disk layouts are understood:

* the legacy layout (``torch.save(..., _use_new_zipfile_serialization=False)``, what torch < 1.6 wrote):
  five back-to-back pickles -- magic number, protocol version, ``sys_info``, the object with persistent ids
  for its storages, the list of storage keys -- then for each key, in that order, a little-endian int64
  element count followed by the storage's raw bytes;
* the zip layout (torch >= 1.6): ``<archive>/data.pkl`` holds the object and ``<archive>/data/<key>``
  each storage's raw bytes.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

__all__ = ["UnsafeWeightsError", "read_torch_state_dict"]

# torch.serialization.MAGIC_NUMBER and PROTOCOL_VERSION of the legacy layout.
LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001


class UnsafeWeightsError(ValueError):
    """The weights file is not a plain tensor checkpoint: its pickle names a global outside the allow-list."""


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and its siblings: just the element dtype."""

    name: str
    dtype: np.dtype[Any]


@dataclass
class _Storage:
    """A storage named by a persistent id; its bytes are attached once they have been read."""

    key: str
    dtype: np.dtype[Any]
    numel: int
    data: np.ndarray | None = field(default=None, repr=False)
    # A legacy "view" of another storage: (base storage, element offset).
    view_of: tuple[_Storage, int] | None = None

    def array(self) -> np.ndarray:
        if self.view_of is not None:
            base, offset = self.view_of
            return base.array()[offset : offset + self.numel]
        if self.data is None:
            raise ValueError(f"storage {self.key!r} has no data in the file")
        return self.data


@dataclass
class _PendingTensor:
    """A tensor whose storage bytes come later in the legacy layout; materialized by :func:`_materialize`."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def to_numpy(self) -> np.ndarray:
        flat = self.storage.array()
        if not self.size:
            return flat[self.offset : self.offset + 1].reshape(()).copy()
        count = int(np.prod(self.size))
        if count == 0:
            return np.zeros(self.size, dtype=flat.dtype)
        reach = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True)) + 1
        if self.offset < 0 or min(self.stride) < 0 or reach > flat.size:
            raise ValueError(f"tensor view exceeds its storage {self.storage.key!r} ({flat.size} elements)")
        if self.stride == _contiguous_strides(self.size):
            return flat[self.offset : self.offset + count].reshape(self.size).copy()
        item = flat.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.size, strides=tuple(s * item for s in self.stride), writeable=False
        )
        return np.ascontiguousarray(view)


def _contiguous_strides(size: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> _PendingTensor:
    if not isinstance(storage, _Storage):
        raise UnsafeWeightsError(f"a tensor is rebuilt from {type(storage).__name__}, not from a storage")
    return _PendingTensor(storage, int(storage_offset), tuple(int(n) for n in size), tuple(int(s) for s in stride))


def _rebuild_tensor(
    storage: _Storage, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> _PendingTensor:
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data: _PendingTensor, requires_grad: bool = False, backward_hooks: Any = None) -> _PendingTensor:
    return data


def _rebuild_parameter_with_state(
    data: _PendingTensor, requires_grad: bool, backward_hooks: Any, state: Any
) -> _PendingTensor:
    return data


_STORAGE_DTYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "<i1",
    "ByteStorage": "<u1",
    "BoolStorage": "?",
}

# Every global a plain state-dict checkpoint names, mapped to the numpy stand-ins above.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    **{("torch", name): _StorageType(name, np.dtype(code)) for name, code in _STORAGE_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals; storages come in as persistent ids."""

    def __init__(self, file: BinaryIO, storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        # Protocol-2 pickles spell some names the Python 2 way (__builtin__.eval); map them as fix_imports does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeWeightsError(
                f"refusing to load {module}.{name}: the weights file's pickle names a global outside the "
                "allow-list of a plain tensor checkpoint"
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafeWeightsError(f"unexpected persistent id in the weights file: {pid!r}")
        _, storage_type, key, _location, numel, *rest = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafeWeightsError(f"unexpected storage type in the weights file: {storage_type!r}")
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = _Storage(key, storage_type.dtype, int(numel))
        view_metadata = rest[0] if rest else None
        if view_metadata is None:
            return storage
        view_key, offset, view_size = view_metadata
        view_key = str(view_key)
        if view_key not in self._storages:
            self._storages[view_key] = _Storage(view_key, storage_type.dtype, int(view_size), view_of=(storage, offset))
        return self._storages[view_key]


def _load_plain_pickle(file: BinaryIO, what: str) -> Any:
    """Load one of the legacy layout's bookkeeping pickles (ints, dicts, lists of strings only)."""
    try:
        return _RestrictedUnpickler(file, {}).load()
    except UnsafeWeightsError:
        raise
    except Exception as error:
        raise ValueError(f"not a PyTorch checkpoint: cannot read its {what} ({error})") from error


def _read_legacy(file: BinaryIO, source: str) -> Any:
    magic = _load_plain_pickle(file, "magic number")
    if magic != LEGACY_MAGIC_NUMBER:
        raise ValueError(f"{source} is not a PyTorch checkpoint (wrong magic number)")
    protocol = _load_plain_pickle(file, "protocol version")
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise ValueError(f"{source}: unsupported PyTorch legacy protocol version {protocol!r}")
    sys_info = _load_plain_pickle(file, "sys_info")
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError(f"{source} was written on a big-endian machine; not supported")
    storages: dict[str, _Storage] = {}
    try:
        obj = _RestrictedUnpickler(file, storages).load()
    except (UnsafeWeightsError, ValueError):
        raise
    except Exception as error:
        raise ValueError(f"{source}: malformed checkpoint pickle ({error})") from error
    keys = _load_plain_pickle(file, "storage keys")
    if not isinstance(keys, list):
        raise ValueError(f"{source}: malformed storage key list")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise ValueError(f"{source}: storage {key!r} is listed but never used")
        (numel,) = struct.unpack("<q", _read_exactly(file, 8, source))
        raw = _read_exactly(file, numel * storage.dtype.itemsize, source)
        storage.data = np.frombuffer(raw, dtype=storage.dtype, count=numel)
        storage.numel = numel
    return obj


def _read_exactly(file: BinaryIO, count: int, source: str) -> bytes:
    data = file.read(count)
    if len(data) != count:
        raise ValueError(f"{source}: truncated checkpoint (storage data ends early)")
    return data


def _read_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ValueError(f"{path} is a zip file but not a PyTorch checkpoint (no single data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        try:
            obj = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
        except (UnsafeWeightsError, ValueError):
            raise
        except Exception as error:
            raise ValueError(f"{path}: malformed checkpoint pickle ({error})") from error
        for key, storage in storages.items():
            if storage.view_of is not None:
                continue
            raw = archive.read(f"{prefix}data/{key}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype)
    return obj


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _PendingTensor):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def read_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch ``state_dict`` file as ``{name: numpy array}``, in the file's order.

    Raises :class:`UnsafeWeightsError` when the pickle names anything but plain tensor-checkpoint globals
    (nothing it names is called), and ``ValueError`` for a file that is not a torch checkpoint. A checkpoint
    that wraps its state dict (``{"state_dict": ...}``) is unwrapped.
    """
    path = Path(path)
    if zipfile.is_zipfile(path):
        obj = _read_zip(path)
    else:
        with path.open("rb") as file:
            obj = _read_legacy(file, str(path))
    obj = _materialize(obj)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not tensors:
        raise ValueError(f"{path} holds no tensors")
    return tensors
