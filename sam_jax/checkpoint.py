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
import ctypes
import io
import mmap
import os
import pickle
import re
import struct
import threading
import weakref
import zipfile
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import flax.linen as nn
import jax
import ml_dtypes
import numpy as np
from flax import traverse_util

from sam_jax.atomic_io import atomic_open

try:  # ISA-L's CRC-32 runs ~7x faster than zlib's (0.3 s instead of 2 s for ViT-H)
    from isal.isal_zlib import crc32 as _crc32
except ImportError:  # pragma: no cover - isal is a dependency; zlib gives the same sums
    _crc32 = zlib.crc32

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
    """``torch._utils._rebuild_tensor_v2`` for numpy: a read-only strided view of the storage
    (no copy: with a memory-mapped archive the tensor reads the file's pages).

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
    return np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=[s * storage.dtype.itemsize for s in stride], writeable=False
    )


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
                raw = self._archive.read(name)  # _MappedZip: a view of the mapped file
            except KeyError:
                raise ValueError(f"{self._source}: storage {name} is missing from the archive") from None
            if len(raw) % storage.dtype.itemsize:
                raise ValueError(
                    f"storage {name} has {len(raw)} bytes, not a whole number of {storage.dtype} items"
                )
            self._cache[key] = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<"))
        return self._cache[key]


_byte_bounds = getattr(np.lib, "array_utils", np).byte_bounds  # moved in numpy 2
# The read-only file mappings made here: the only ones whose pages _release may drop (on a
# private writable mapping, e.g. np.load(mmap_mode="c"), dropping pages loses writes).
_READ_ONLY_MAPS: weakref.WeakSet = weakref.WeakSet()
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # a zip member's local file header (30 bytes)


class _MappedZip:
    """A zip archive mapped read-only into memory, read without copying.

    ``torch.save`` and ``np.savez`` store members uncompressed, so a member's bytes
    are a range of the file: :meth:`read` returns them as a read-only ``uint8``
    array viewing the mapping (a compressed member is decompressed instead). Each
    member's CRC-32 is checked before it is returned, and the pages the check read
    leave the process's resident set again (:func:`_release`): they stay in the
    page cache and come back when the array is used.
    """

    def __init__(self, path: str):
        self.file = open(path, "rb")  # noqa: SIM115 - closed by __exit__
        try:
            self.map = mmap.mmap(self.file.fileno(), 0, access=mmap.ACCESS_READ)
            _READ_ONLY_MAPS.add(self.map)
            self.zip = zipfile.ZipFile(self.file)
        except BaseException:
            self.file.close()
            raise

    def __enter__(self) -> _MappedZip:
        return self

    def __exit__(self, *_exc) -> None:
        # The map stays open while arrays view it (it closes when the last one is freed).
        self.zip.close()
        self.file.close()

    def namelist(self) -> list[str]:
        return self.zip.namelist()

    def read(self, name: str) -> np.ndarray:
        """Bytes of member ``name`` (KeyError if absent; zipfile.BadZipFile if damaged)."""
        info = self.zip.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            return np.frombuffer(self.zip.read(name), np.uint8)  # inflated; zipfile checks the CRC
        header = _LOCAL_HEADER.unpack(self.map[info.header_offset : info.header_offset + 30])
        if header[0] != b"PK\x03\x04":
            raise zipfile.BadZipFile(f"bad local header for member {name!r}")
        start = info.header_offset + _LOCAL_HEADER.size + header[10] + header[11]
        if info.compress_size != info.file_size or start + info.file_size > len(self.map):
            raise zipfile.BadZipFile(f"member {name!r} runs past the end of the file")
        data = np.frombuffer(self.map, np.uint8, info.file_size, start)
        if _crc32(data) != info.CRC:
            raise zipfile.BadZipFile(f"Bad CRC-32 for file {name!r}")
        _release(data)
        return data


def _mapping_of(array: np.ndarray) -> mmap.mmap | None:
    """The memory map ``array`` views, if any (following ``.base`` and memoryviews)."""
    obj: Any = array
    while obj is not None and not isinstance(obj, mmap.mmap):
        obj = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
    return obj


def _release(array: np.ndarray) -> None:
    """Drop the whole pages under a memory-mapped ``array`` from the resident set.

    Only a hint to the kernel, safe for a read-only file mapping: the pages stay in
    the page cache and fault back in (same bytes) when anything reads them again.
    Arrays not viewing one of this module's read-only mappings are left alone.
    """
    mapping = _mapping_of(array)
    if mapping not in _READ_ONLY_MAPS or array.size == 0 or not hasattr(mapping, "madvise"):
        return
    lo, hi = _byte_bounds(array)
    base = np.frombuffer(mapping, np.uint8, 1).ctypes.data
    start = -(-(lo - base) // mmap.PAGESIZE) * mmap.PAGESIZE
    stop = (hi - base) // mmap.PAGESIZE * mmap.PAGESIZE
    if stop > start:
        mapping.madvise(mmap.MADV_DONTNEED, start, stop - start)


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

    The arrays are read-only views of the memory-mapped file (``torch.save`` stores
    tensors uncompressed); nothing is copied until a caller needs another layout.
    They read the file while they live: do not rewrite it in place meanwhile.

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
        with _MappedZip(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if len(pickles) != 1:
                raise ValueError(f"{path}: expected one data.pkl in the archive, found {pickles}")
            prefix = pickles[0][: -len("data.pkl")]
            raw = archive.read(pickles[0])
            obj = _RestrictedUnpickler(io.BytesIO(raw.tobytes()), archive, prefix, path).load()
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
    """A view of ``value`` in the flax layout of parameter ``path`` (see module doc)."""
    leaf = path[-1]
    if leaf == "kernel" and value.ndim == 2:
        return value.T
    if leaf == "kernel" and value.ndim == 4:
        if any(p.startswith(_TRANSPOSED_CONV) for p in path):
            return value.transpose(2, 3, 0, 1)
        return value.transpose(2, 3, 1, 0)
    return value


_ALIGN = 64  # byte alignment of array data we write or allocate (zero-copy into jax on the host)
_TILE = 256  # 256x256 float32 tiles: 256 KiB each side, cache-resident while transposed


def _contiguous(value: np.ndarray, dtype: Any, empty: Callable[..., np.ndarray] | None = None) -> np.ndarray:
    """``value`` as a C-contiguous array of ``dtype``: itself when it already is one (a
    memory-mapped view stays one), else one copy into ``empty(shape, dtype)`` (default
    :func:`_aligned_empty`); the pages of a memory-mapped source are released once copied.

    Transposed 2-D views are copied tile by tile: numpy's element-wise strided copy
    over a whole ViT-H kernel misses the cache on every read (~6x slower).
    """
    dtype = np.dtype(dtype)
    if value.dtype == dtype and value.flags.c_contiguous:
        return value
    out = (empty or _aligned_empty)(value.shape, dtype)
    if value.ndim == 2 and not value.flags.c_contiguous:
        rows, cols = value.shape
        for i in range(0, rows, _TILE):
            for j in range(0, cols, _TILE):
                np.copyto(out[i : i + _TILE, j : j + _TILE], value[i : i + _TILE, j : j + _TILE], "unsafe")
    else:
        np.copyto(out, value, "unsafe")
    _release(value)
    return out


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised array whose data starts at a multiple of 64 bytes (so that
    ``jax.device_put`` on the CPU uses it in place instead of copying it)."""
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    buf = np.empty(size + _ALIGN, np.uint8)
    skip = -buf.ctypes.data % _ALIGN
    return buf[skip : skip + size].view(dtype).reshape(shape)


_MADV_POPULATE_WRITE = 23  # Linux >= 5.14: fault a whole range in with one call


class _Arena:
    """Fresh memory for the kernels a ``.pth`` load copies, faulted in ahead of time.

    First-touch page faults on 2.5 GB of new memory were most of a ViT-H load's
    copying time. The arena maps all of it at once and a background thread has the
    kernel fault it in with one ``madvise(MADV_POPULATE_WRITE)`` (through ctypes, so
    the GIL is free meanwhile and the caller traces the model's template on the other
    core). :meth:`empty` hands out 64-byte aligned slices; past the end (or if the
    kernel refuses the advice) it falls back to :func:`_aligned_empty`. The mapping
    is freed with the last array viewing it.
    """

    def __init__(self, nbytes: int):
        self._map = mmap.mmap(-1, max(int(nbytes), 1))
        self._buf = np.frombuffer(self._map, np.uint8)
        self._used = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._populate, daemon=True)
        self._thread.start()

    def _populate(self) -> None:
        try:
            madvise = ctypes.CDLL(None, use_errno=True).madvise
        except (OSError, AttributeError, TypeError):  # no libc madvise here: pages fault in on first write
            return
        madvise(ctypes.c_void_p(self._buf.ctypes.data), ctypes.c_size_t(self._buf.size), _MADV_POPULATE_WRITE)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        self._thread.join()
        dtype = np.dtype(dtype)
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        with self._lock:
            start = -(-self._used // _ALIGN) * _ALIGN
            if start + size > self._buf.size:
                return _aligned_empty(shape, dtype)
            self._used = start + size
        return self._buf[start : start + size].view(dtype).reshape(shape)


def _workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def state_dict_to_params(
    state_dict: Mapping[str, np.ndarray], template: Any, *, _arena: _Arena | None = None
) -> dict:
    """Map an official state_dict onto a parameter tree shaped like ``template``.

    ``template`` is a (possibly boxed, possibly abstract) params tree, e.g. from
    ``jax.eval_shape``, or a function returning one (it is then called while the
    memory for the copies is prepared, see :class:`_Arena`); every shape is checked
    against it before anything is copied. Each parameter becomes a C-contiguous
    array of its template dtype: a memory-mapped view of the file is kept as it is
    when its layout and dtype already fit, the rest (transposed kernels) is copied
    once, on a few threads.

    Raises:
      CheckpointMismatchError: listing missing keys, unexpected keys and shape
        mismatches (torch key, expected and found shapes).
    """
    # Room for the copies: every tensor of 2 or more axes (the kernels, and a few
    # tables that need no copy).
    arena = _arena or _Arena(sum(v.nbytes for v in state_dict.values() if np.ndim(v) >= 2))
    flat = traverse_util.flatten_dict(nn.unbox(template() if callable(template) else template))
    wanted = {torch_key(p): p for p in flat}
    missing = sorted(set(wanted) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(wanted))
    views, bad_shapes = {}, []
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
        views[path] = value
    if missing or unexpected or bad_shapes:
        raise CheckpointMismatchError(
            "checkpoint does not fit the model: " + describe_mismatch(missing, unexpected, bad_shapes)
        )
    # Largest first, so the threads finish together.
    order = sorted(views, key=lambda p: -views[p].size)
    with ThreadPoolExecutor(_workers()) as pool:
        arrays = pool.map(lambda p: _contiguous(views[p], flat[p].dtype, arena.empty), order)
        out = dict(zip(order, arrays))
    return traverse_util.unflatten_dict(out)


_PAD_ID = 0xD935  # zip extra-field id of the alignment padding (the id Android's zipalign uses)


def save_params(params: Any, path: str | os.PathLike) -> None:
    """Save a params tree to ``.npz`` (keys are '/'-joined paths; no pickle).

    The file is a standard uncompressed ``np.savez`` archive whose members are laid
    out so that each array's data starts at a multiple of 64 bytes (padding in the
    zip headers' extra field): :func:`load_params` then maps the arrays in place.
    """
    flat = traverse_util.flatten_dict(nn.unbox(params))
    arrays = {"/".join(k): np.asarray(jax.device_get(v)) for k, v in flat.items()}
    arrays = {k: v.astype(np.float32) if v.dtype == ml_dtypes.bfloat16 else v for k, v in arrays.items()}
    with atomic_open(path, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            # Local header: 30 bytes, the name, our extra field, then the zip64 record (20 bytes).
            # The .npy header itself is padded to a multiple of 64 bytes by numpy.
            fixed = f.tell() + 30 + len(info.filename.encode()) + 4 + 20
            info.extra = struct.pack("<HH", _PAD_ID, -fixed % _ALIGN) + bytes(-fixed % _ALIGN)
            with z.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, value, allow_pickle=False)


def _npy_array(name: str, raw: np.ndarray) -> np.ndarray:
    """The array of a ``.npy`` file's bytes ``raw``: a view, no copy."""
    head = io.BytesIO(raw[: 1 << 16].tobytes())
    version = np.lib.format.read_magic(head)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"member {name} has .npy format version {version}, not 1.0 or 2.0")
    read_header = getattr(np.lib.format, f"read_array_header_{version[0]}_0")
    shape, fortran_order, dtype = read_header(head)
    if dtype.hasobject:
        raise ValueError(f"member {name} holds Python objects (not loaded: it would need pickle)")
    count = int(np.prod(shape, dtype=np.int64))
    if head.tell() + count * dtype.itemsize > raw.size:
        raise ValueError(f"member {name} is shorter than its {shape} {dtype} array")
    flat_view = np.frombuffer(raw, dtype, count, head.tell())
    return flat_view.reshape(shape, order="F" if fortran_order else "C")


def load_params(path: str | os.PathLike, template: Any) -> dict:
    """Load a ``.npz`` written by :func:`save_params`, checked against ``template``.

    Uncompressed members (every ``np.savez`` file) are memory-mapped: arrays of the
    template's dtype are read-only views of the file; a compressed member is inflated.
    Mapped arrays read the file for as long as they live, so the file must not be
    rewritten in place meanwhile (replacing it, as :func:`save_params` does, is safe).
    """
    path = os.fspath(path)
    _check_archive(path, ".npz")
    try:
        with _MappedZip(path) as archive:
            flat = {
                tuple(n[: -len(".npy")].split("/")): _npy_array(n, archive.read(n))
                for n in archive.namelist()
                if n.endswith(".npy")
            }
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
    return traverse_util.unflatten_dict({k: _contiguous(v, want[k].dtype) for k, v in flat.items()})


def load_checkpoint(path: str | os.PathLike, template: Any) -> dict:
    """Params shaped like ``template`` from an official ``.pth`` or our ``.npz``.

    ``template``: a (possibly boxed, possibly abstract) params tree, e.g.
    :func:`sam_jax.modeling.variants.param_template` of the module, or a function
    returning one (called once the file is open: a ``.pth`` load traces it while the
    memory for its copies is faulted in).
    """
    if os.fspath(path).endswith(".npz"):
        return load_params(path, template() if callable(template) else template)
    # A .pth: while the file is read and checked, the memory for the kernel copies is
    # faulted in (:class:`_Arena`) and a template given as a function is traced.
    path = os.fspath(path)
    _check_archive(path, ".pth")
    arena = _Arena(os.path.getsize(path))
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(template) if callable(template) else None
        state_dict = read_pth(path)
        return state_dict_to_params(state_dict, pending.result() if pending else template, _arena=arena)
