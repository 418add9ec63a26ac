"""The checkpoint file formats: released SAM ``.pth`` files and our ``.npz`` files.

This module knows only the formats and the key mapping; it takes the parameter
tree to fill as a *template* (shapes and dtypes, e.g. from
:func:`sam_jax.modeling.variants.param_template`) and knows nothing of variants.

* :func:`read_pth` reads a PyTorch ``.pth`` state_dict (the zip + pickle format
  of ``torch.save``) with the standard library and numpy. Torch is not needed and
  no code from the file runs: the pickle may only name the handful of
  constructors a plain state_dict uses; anything else is refused with
  :class:`UnsafeCheckpointError`.
* :func:`state_dict_to_params` maps official keys onto our parameter tree, one
  to one, and refuses missing, unexpected or wrongly shaped keys with
  :class:`CheckpointMismatchError` naming them.
* :func:`save_params` / :func:`load_params` keep converted parameters in a
  ``.npz`` file (no pickle), so a ``.pth`` is read once;
  :func:`load_checkpoint` reads either format onto a template.

Name mapping (flax path <-> torch key): a path component ``name_N`` is the
``N``-th entry of a list and reads ``name.N``; leaves ``kernel`` (Linear, conv),
``scale`` (LayerNorm) and ``embedding`` (Embedding) read ``weight``; other leaves
keep their name. Linear kernels are transposed, conv kernels go from
``(out, in, kh, kw)`` to ``(kh, kw, in, out)``, transposed-conv kernels from
``(in, out, kh, kw)`` to ``(kh, kw, in, out)``.

Conversion of a ``.pth`` into an ``.npz`` (which needs the model's template) is
:func:`sam_jax.sam_model.convert_checkpoint`, on the command line
``sam-jax convert IN.pth OUT.npz``.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import re
import struct
import zipfile
import zlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
from flax import traverse_util

from sam_jax.atomic_io import atomic_open

# Modules whose 4-D kernels are transposed convolutions (torch layout (in, out, kh, kw)).
_TRANSPOSED_CONV = ("output_upscaling_",)
_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


class UnsafeCheckpointError(ValueError):
    """The checkpoint's pickle asks to run something a plain state_dict never needs."""


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not fit the model."""


class CorruptCheckpointError(ValueError):
    """The checkpoint file is truncated or its bytes are damaged."""


def describe_mismatch(
    missing: list[str], unexpected: list[str], wrong_shapes: list[str], first: int = 3
) -> str:
    """A short summary of a key/shape mismatch: counts and the first ``first`` keys of each kind
    (a full list can run to thousands of keys)."""

    def part(what: str, items: list[str]) -> str:
        more = f", ... ({len(items) - first} more)" if len(items) > first else ""
        return f"{len(items)} {what} ({'; '.join(items[:first])}{more})"

    parts = [
        part(w, i)
        for w, i in (("missing", missing), ("unexpected", unexpected), ("with wrong shapes", wrong_shapes))
        if i
    ]
    return ", ".join(parts) or "no differences"


class _Storage:
    """Marker for a ``torch.<Type>Storage`` class named in the pickle."""

    def __init__(self, name: str, dtype: Any):
        self.name, self.dtype = name, np.dtype(dtype)


_STORAGES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


def _ints(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"tensor {name} must be a tuple of integers, got {value!r}")
    return tuple(value)


def _rebuild_tensor(storage, offset, size, stride, *_unused):
    """``torch._utils._rebuild_tensor_v2`` for numpy: a strided view, copied.

    The record comes from the file, so it is checked before any view is made: offset,
    sizes and strides >= 0 and the whole strided extent inside the storage (numpy's
    ``as_strided`` would otherwise read memory outside it).
    """
    if not isinstance(storage, np.ndarray):
        raise ValueError(f"tensor storage is {type(storage).__name__}, not a storage record")
    size, stride = _ints("size", size), _ints("stride", stride)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise ValueError(f"tensor has a bad storage offset {offset!r} (must be an integer >= 0)")
    if len(size) != len(stride):
        raise ValueError(f"tensor size {size} and stride {stride} differ in length")
    if min(size, default=0) < 0 or min(stride, default=0) < 0:
        raise ValueError(f"tensor has a negative size or stride (size {size}, stride {stride})")
    if 0 in size:
        return np.zeros(size, storage.dtype)
    extent = offset + 1 + sum((n - 1) * s for n, s in zip(size, stride))
    if extent > storage.size:
        raise ValueError(
            f"tensor of size {size}, stride {stride} at offset {offset} runs past "
            f"its storage ({storage.size} items)"
        )
    if not size:
        return np.array(storage[offset])
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * storage.dtype.itemsize for s in stride], writeable=False
    )
    return np.array(view)


def _rebuild_parameter(data, _requires_grad, _hooks, *_unused):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of a plain tensor state_dict."""

    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, source: str):
        super().__init__(file)
        self._archive, self._prefix, self._source = archive, prefix, source
        self._cache: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGES:
            return _Storage(name, _STORAGES[name])
        raise UnsafeCheckpointError(
            f"refusing to load {self._source}: its pickle references {module}.{name}, which a "
            "plain state_dict of tensors never needs (loading it could execute code)"
        )

    def persistent_load(self, pid):
        if not (
            isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage" and isinstance(pid[1], _Storage)
        ):
            raise UnsafeCheckpointError(f"refusing to load {self._source}: unexpected persistent id {pid!r}")
        storage, key = pid[1], str(pid[2])
        if key not in self._cache:
            name = f"{self._prefix}data/{key}"
            try:
                raw = self._archive.read(name)
            except KeyError:
                raise ValueError(f"{self._source}: storage {name} is missing from the archive") from None
            if len(raw) % storage.dtype.itemsize:
                raise ValueError(
                    f"storage {name} has {len(raw)} bytes, not a whole number of {storage.dtype} items"
                )
            self._cache[key] = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))
        return self._cache[key]


def _check_archive(path: str, what: str) -> None:
    """Raise a clear error unless ``path`` is a complete zip archive (``.pth`` / ``.npz``)."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path} is a directory, not a {what} file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if zipfile.is_zipfile(path):
        return
    with open(path, "rb") as f:
        head = f.read(4)
    if not head:
        raise CorruptCheckpointError(f"checkpoint {path} is truncated: the file is empty")
    if head == b"PK\x03\x04":  # a zip's first entry without the archive's end record
        raise CorruptCheckpointError(
            f"checkpoint {path} is truncated: the zip archive has no end record (was the "
            "download or copy cut short?)"
        )
    if what == ".npz":
        raise CorruptCheckpointError(f"checkpoint {path} is not an .npz archive")
    raise ValueError(
        f"{path} is not a zip-format PyTorch checkpoint (torch >= 1.6 torch.save); "
        "legacy tar/pickle checkpoints are not read"
    )


# What a damaged archive raises while it is read (bad CRC, bad headers, a cut pickle, ...).
_DAMAGE = (
    zipfile.BadZipFile,
    zlib.error,
    pickle.UnpicklingError,
    EOFError,
    struct.error,
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    OSError,
)


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``torch.save``-d state_dict into ``{key: numpy array}`` without torch.

    Raises:
      FileNotFoundError: no such file. IsADirectoryError: a directory.
      UnsafeCheckpointError: the pickle names a callable beyond plain tensors.
      CorruptCheckpointError: the file is truncated or damaged (bad CRC, bad pickle,
        a tensor record outside its storage).
      ValueError: not a zip-format torch checkpoint, or not a dict of tensors.
    """
    path = os.fspath(path)
    _check_archive(path, ".pth")
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pickles) != 1:
                raise ValueError(f"{path}: expected one data.pkl in the archive, found {pickles}")
            prefix = pickles[0][: -len("data.pkl")]
            with archive.open(pickles[0]) as f:
                unpickler = _RestrictedUnpickler(io.BytesIO(f.read()), archive, prefix, path)
                obj = unpickler.load()
    except (UnsafeCheckpointError, CorruptCheckpointError):
        raise
    except _DAMAGE as e:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: {type(e).__name__}: {e}") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, Mapping) and set(obj) == {wrapper}:
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, np.ndarray) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state_dict of tensors")
    return dict(obj)


def torch_key(path: tuple[str, ...]) -> str:
    """Official state_dict key of a flax parameter path (see module doc)."""
    parts = [re.sub(r"^(.*)_(\d+)$", r"\1.\2", p) for p in path[:-1]]
    parts.append(_LEAF_TO_TORCH.get(path[-1], path[-1]))
    return ".".join(parts)


def _to_flax(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    leaf = path[-1]
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    if leaf == "kernel" and value.ndim == 4:
        if any(p.startswith(_TRANSPOSED_CONV) for p in path):
            return value.transpose(2, 3, 0, 1)
        return value.transpose(2, 3, 1, 0)
    return value


def state_dict_to_params(state_dict: Mapping[str, np.ndarray], template: Any) -> dict:
    """Map an official state_dict onto a parameter tree shaped like ``template``.

    ``template`` is a (possibly boxed, possibly abstract) params tree, e.g. from
    ``jax.eval_shape``. Each parameter is cast to its template dtype.

    Raises:
      CheckpointMismatchError: listing missing keys, unexpected keys and shape
        mismatches (torch key, expected and found shapes).
    """
    flat = traverse_util.flatten_dict(nn.unbox(template))
    wanted = {torch_key(p): p for p in flat}
    missing = sorted(set(wanted) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(wanted))
    out, bad_shapes = {}, []
    for key, path in sorted(wanted.items()):
        if key not in state_dict:
            continue
        target = flat[path]
        value = _to_flax(path, np.asarray(state_dict[key]))
        if tuple(value.shape) != tuple(target.shape):
            bad_shapes.append(
                f"{key}: model expects {tuple(target.shape)} "
                f"(flax layout), checkpoint has {tuple(state_dict[key].shape)}"
            )
            continue
        out[path] = np.asarray(value, dtype=target.dtype)
    if missing or unexpected or bad_shapes:
        raise CheckpointMismatchError(
            "checkpoint does not fit the model: " + describe_mismatch(missing, unexpected, bad_shapes)
        )
    return traverse_util.unflatten_dict(out)


def save_params(params: Any, path: str | os.PathLike) -> None:
    """Save a params tree to ``.npz`` (keys are '/'-joined paths; no pickle)."""
    flat = traverse_util.flatten_dict(nn.unbox(params))
    arrays = {"/".join(k): np.asarray(jax.device_get(v)) for k, v in flat.items()}
    arrays = {k: v.astype(np.float32) if v.dtype == ml_dtypes.bfloat16 else v for k, v in arrays.items()}
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def load_params(path: str | os.PathLike, template: Any) -> dict:
    """Load a ``.npz`` written by :func:`save_params`, checked against ``template``."""
    path = os.fspath(path)
    _check_archive(path, ".npz")
    try:
        with np.load(path, allow_pickle=False) as f:
            flat = {tuple(k.split("/")): f[k] for k in f.files}
    except _DAMAGE as e:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: {type(e).__name__}: {e}") from None
    want = traverse_util.flatten_dict(nn.unbox(template))
    missing = sorted("/".join(k) for k in set(want) - set(flat))
    unexpected = sorted("/".join(k) for k in set(flat) - set(want))
    bad = sorted(
        f"{'/'.join(k)}: expects {tuple(want[k].shape)}, file has {flat[k].shape}"
        for k in set(want) & set(flat)
        if tuple(want[k].shape) != flat[k].shape
    )
    if missing or unexpected or bad:
        raise CheckpointMismatchError(
            f"{path} does not fit the model: {describe_mismatch(missing, unexpected, bad)}"
        )
    return traverse_util.unflatten_dict({k: np.asarray(v, dtype=want[k].dtype) for k, v in flat.items()})


def load_checkpoint(path: str | os.PathLike, template: Any) -> dict:
    """Params shaped like ``template`` from an official ``.pth`` or our ``.npz``.

    ``template``: a (possibly boxed, possibly abstract) params tree, e.g.
    :func:`sam_jax.modeling.variants.param_template` of the module.
    """
    if os.fspath(path).endswith(".npz"):
        return load_params(path, template)
    return state_dict_to_params(read_pth(path), template)
