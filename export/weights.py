"""A checkpoint's tensors as numpy arrays, read without torch and without running its pickle.

`model.safetensors` is a JSON header and raw little-endian arrays. `pytorch_model.bin`
(torch's zip format) is a zip of `ARCHIVE/data.pkl`, a pickle that names each tensor's
storage, offset, shape and stride, and `ARCHIVE/data/<key>`, each storage's raw bytes. The
pickle is read by an unpickler that resolves only the globals a state dict of tensors
holds (the ones `torch.load(weights_only=True)` allows for it) to harmless functions of
ours; anything else is refused by name, so nothing in the file runs. torch's legacy
(pre-zip) format is read by torch when it is installed.
"""

from __future__ import annotations

import collections
import json
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np

from gpt2_onnx.errors import SourceError

# torch storage class → numpy dtype; bfloat16 has none, it is read as uint16 and widened
TORCH_STORAGES = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}
# safetensors dtype name → numpy dtype (same bfloat16 rule)
SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
ZIP_MAGIC = b"PK\x03\x04"


def read_tensors(file: Path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors or torch file, floating point ones as FP32."""
    if file.suffix == ".safetensors":
        return _read_safetensors(file)
    with open(file, "rb") as f:
        head = f.read(4)
    if head == ZIP_MAGIC:
        return _read_torch_zip(file)
    return _read_torch_legacy(file)


def _corrupt(file: Path, what: str) -> SourceError:
    return SourceError(f"{file} is truncated or corrupt ({what}); download the checkpoint again")


def to_fp32(array: np.ndarray, bfloat16: bool) -> np.ndarray:
    """FP16/FP64 cast, BF16 (stored as uint16) shifted into the high half of an FP32; FP32 as is."""
    if bfloat16:
        return (array.astype(np.uint32) << 16).view(np.float32)
    return array.astype(np.float32, copy=False) if array.dtype.kind == "f" else array


def _read_safetensors(file: Path) -> dict[str, np.ndarray]:
    """Header: u64 length, JSON {name: {dtype, shape, data_offsets}}; then the arrays."""
    data = bytearray(file.read_bytes())  # writable, so arrays are views that the graph builders may keep
    try:
        (length,) = struct.unpack_from("<Q", data)
        header = json.loads(data[8 : 8 + length])
        header.pop("__metadata__", None)
        tensors = {}
        for name, entry in header.items():
            dtype, shape, (begin, end) = (
                SAFETENSORS_DTYPES[entry["dtype"]],
                tuple(entry["shape"]),
                entry["data_offsets"],
            )
            if end - begin != dtype.itemsize * int(np.prod(shape)) or 8 + length + end > len(data):
                raise _corrupt(file, f"{name} has {end - begin} bytes for shape {list(shape)}")
            array = np.frombuffer(data, dtype, int(np.prod(shape)), 8 + length + begin).reshape(shape)
            tensors[name] = to_fp32(array, entry["dtype"] == "BF16")
    except SourceError:
        raise
    except KeyError as e:
        raise SourceError(
            f"{file} holds a tensor of dtype {e}, which gpt2-onnx does not read; save the checkpoint in FP32, FP16 or "
            "BF16"
        ) from None
    except (struct.error, ValueError, TypeError, UnicodeDecodeError) as e:
        raise _corrupt(file, type(e).__name__) from None
    return tensors


class _Storage:
    """What the pickle's storage class names resolve to: the dtype of a storage."""

    def __init__(self, name: str):
        self.name, self.dtype = name, TORCH_STORAGES[name]


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """torch._utils._rebuild_tensor_v2 on a numpy storage: a strided view, bounds checked."""
    flat, bfloat16 = storage
    size, stride = tuple(size), tuple(stride)
    if len(size) != len(stride) or min((offset, *size, *stride), default=0) < 0:
        raise ValueError(f"tensor of size {size}, stride {stride}, offset {offset}")
    if 0 not in size and offset + sum((n - 1) * s for n, s in zip(size, stride)) >= len(flat):
        raise ValueError(
            f"tensor of size {size}, stride {stride}, offset {offset} exceeds its storage of {len(flat)} elements"
        )
    view = np.lib.stride_tricks.as_strided(flat[offset:], size, tuple(s * flat.itemsize for s in stride))
    return to_fp32(np.ascontiguousarray(view), bfloat16)  # a copy only for a non-contiguous view


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _Storage(name) for name in TORCH_STORAGES},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves only ALLOWED_GLOBALS; storages are numpy arrays over the zip's records."""

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: Path):
        super().__init__(file)
        self.archive, self.prefix, self.path, self.storages = archive, prefix, path, {}

    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise SourceError(
                f"{self.path} refers to {module}.{name}, which a state dict of tensors never holds; "
                "the file was refused unread (it may run code): use a checkpoint saved with save_pretrained"
            )
        return ALLOWED_GLOBALS[module, name]

    def persistent_load(self, pid):
        # ('storage', storage class, key, location, numel)
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)):
            raise _corrupt(self.path, f"unknown persistent id {pid!r:.60}")
        _, storage, key, _, numel = pid
        if key not in self.storages:
            self.storages[key] = (self._record(f"data/{key}", storage.dtype, numel), storage.name == "BFloat16Storage")
        return self.storages[key]  # tensors sharing a storage (a tied head) share one array

    def _record(self, name: str, dtype: np.dtype, numel: int) -> np.ndarray:
        try:
            info = self.archive.getinfo(self.prefix + name)
        except KeyError:
            raise _corrupt(self.path, f"record {self.prefix}{name} is missing") from None
        if info.file_size != numel * dtype.itemsize:
            raise _corrupt(
                self.path, f"record {self.prefix}{name} has {info.file_size} bytes, {numel * dtype.itemsize} expected"
            )
        buffer = bytearray(info.file_size)
        with self.archive.open(info) as f:
            f.readinto(buffer)
        return np.frombuffer(buffer, dtype)


def _read_torch_zip(file: Path) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(file) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if not pickles:
                raise _corrupt(file, "no data.pkl record")
            prefix = pickles[0].removesuffix("data.pkl")
            if prefix + "byteorder" in archive.namelist() and archive.read(prefix + "byteorder") != b"little":
                raise SourceError(
                    f"{file} was saved on a big-endian machine; load it with torch there and save it again"
                )
            with archive.open(pickles[0]) as f:
                state = _StateDictUnpickler(f, archive, prefix, file).load()
    except SourceError:
        raise
    except (
        zipfile.BadZipFile,
        EOFError,
        OSError,
        pickle.UnpicklingError,
        ValueError,
        TypeError,
        IndexError,
        KeyError,
    ) as e:
        raise _corrupt(file, f"{type(e).__name__}: {e}"[:120]) from None
    return _state_dict(state, file)


def _read_torch_legacy(file: Path) -> dict[str, np.ndarray]:
    """torch's pre-1.6 format interleaves pickles and raw storages; torch reads it, if installed."""
    try:
        import torch
    except ImportError:
        raise SourceError(
            f"{file} is in torch's legacy (pre-zip) format, which only torch reads; convert it where torch is "
            "installed "
            "(load it and save_pretrained, or torch.save(torch.load(f, weights_only=True), f)) or install torch"
        ) from None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=False)
    except Exception as e:  # torch raises many kinds for a bad or unsafe file
        raise _corrupt(file, type(e).__name__) from None
    state = _state_dict(state, file)
    return {name: (t.detach().to(torch.float32) if t.is_floating_point() else t).numpy() for name, t in state.items()}


def _state_dict(state, file: Path) -> dict[str, np.ndarray]:
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise SourceError(
            f"{file} holds a {type(state).__name__}, not a state dict of tensors; save the model with save_pretrained"
        )
    return dict(state)
