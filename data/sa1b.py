"""Readers for SA-1B shards: tar archives, extracted folders, TFDS tfrecords.

A *shard* is one of:

* ``kind="tar"``: an SA-1B archive ``sa_*.tar`` holding ``sa_<id>.jpg`` +
  ``sa_<id>.json`` members. It is read as a stream of members (never
  extracted); member data are located by offset so that skipping a record
  costs one header read and no data read;
* ``kind="folder"``: a directory with the same ``sa_<id>.jpg/.json`` pairs
  (an extracted archive); records in natural order of the numeric id;
* ``kind="tfds"``: a tfrecord file written by the tensorflow-datasets
  ``segment_anything`` builder (``segment_anything-train.tfrecord-*``), one
  serialised ``tf.train.Example`` per image.

Reading happens in two phases so that resumption is cheap:

1. :func:`iter_refs` lists a shard's records as :class:`RecordRef` (where the
   bytes are, plus a reader-level status such as a truncated member) without
   reading any image or JSON data;
2. :class:`Loader.load` reads the bytes of one ref.

:func:`parse_payload` turns the annotation payload (SA-1B JSON text or a TFDS
Example) into an :class:`Annotations` record. Only :func:`parse_payload` on
TFDS data imports tensorflow (lazily), for ``tf.train.Example``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import struct
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np

from data.status import Status

__all__ = [
    "KIND_TAR",
    "KIND_FOLDER",
    "KIND_TFDS",
    "RecordRef",
    "Annotations",
    "PayloadError",
    "resolve_shards",
    "shard_kind",
    "iter_refs",
    "Loader",
    "parse_payload",
]

KIND_TAR = "tar"
KIND_FOLDER = "folder"
KIND_TFDS = "tfds"
PAYLOAD_JSON = 0
PAYLOAD_TFDS = 1


@dataclass(frozen=True)
class RecordRef:
    """Where one image record lives, without its data.

    Attributes:
      shard: shard path.
      key: human-readable record key (``<shard>:<stem or index>``).
      jpeg: ``(offset, size)`` in a tar / tfrecord, or a file path (folder).
      payload: same for the annotation payload (JSON or Example); for tfds the
        payload and the image are in the same Example, so ``jpeg`` is None.
      payload_kind: ``PAYLOAD_JSON`` or ``PAYLOAD_TFDS``.
      status: ``Status.OK`` or a reader-level error (truncated member,
        unpaired member); a non-OK ref is never loaded.
    """

    shard: str
    key: str
    jpeg: tuple[int, int] | str | None
    payload: tuple[int, int] | str | None
    payload_kind: int
    status: int = Status.OK


@dataclass
class Annotations:
    """Parsed annotations of one image.

    Attributes:
      image_id: SA-1B image id.
      height, width: image size from the image record.
      sizes: (N, 2) int64 ``[h, w]`` of each RLE.
      counts: N COCO compressed RLE strings (bytes).
      jpeg: image bytes when they come with the payload (TFDS), else None.
    """

    image_id: int
    height: int
    width: int
    sizes: np.ndarray
    counts: list[bytes]
    jpeg: bytes | None = None


class PayloadError(ValueError):
    """Malformed annotation payload (bad JSON, missing/ill-typed fields)."""


def _is_remote(path: str) -> bool:
    return "://" in path


def _open(path: str) -> IO[bytes]:
    if _is_remote(path):
        import tensorflow as tf  # only for remote (gs://...) paths

        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")


def _size(path: str) -> int:
    if _is_remote(path):
        import tensorflow as tf

        return int(tf.io.gfile.stat(path).length)
    return os.path.getsize(path)


def shard_kind(path: str) -> str:
    """Infer the shard kind from its path."""
    if not _is_remote(path) and os.path.isdir(path):
        return KIND_FOLDER
    if path.endswith(".tar"):
        return KIND_TAR
    if ".tfrecord" in os.path.basename(path):
        return KIND_TFDS
    raise ValueError(f"cannot tell the shard kind of {path!r} (expected *.tar, a folder, or *.tfrecord*)")


def resolve_shards(patterns: str | Sequence[str]) -> list[str]:
    """Expand globs / lists of shard paths into a sorted, de-duplicated list.

    Raises:
      FileNotFoundError: a pattern matches nothing or a path does not exist.
      ValueError: no pattern given.
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [os.fspath(patterns)]
    patterns = [os.fspath(p) for p in patterns]
    if not patterns:
        raise ValueError("no shard paths or patterns given")
    out: set[str] = set()
    for pat in patterns:
        if _is_remote(pat):
            import tensorflow as tf

            matches = tf.io.gfile.glob(pat)
        elif any(c in pat for c in "*?["):
            matches = glob.glob(pat)
        else:
            matches = [pat] if os.path.exists(pat) else []
        if not matches:
            raise FileNotFoundError(f"no SA-1B shard matches {pat!r}")
        for m in matches:
            if not _is_remote(m) and not os.access(m, os.R_OK):
                raise FileNotFoundError(f"shard {m!r} (from {pat!r}) is not readable")
        out.update(matches)
    return sorted(out)


_STEM_RE = re.compile(r"(\d+)")


def _natural_key(stem: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in _STEM_RE.split(stem))


def _split_name(name: str) -> tuple[str, str] | None:
    base = name.rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot or ext.lower() not in ("jpg", "jpeg", "json"):
        return None
    return stem, ("json" if ext.lower() == "json" else "jpg")


def _iter_tar_refs(path: str) -> Iterator[RecordRef]:
    fsize = _size(path)
    pending: dict[str, dict[str, tuple[int, int]]] = {}
    order: list[str] = []
    truncated = cut_in_member = False
    last_stem = None
    with _open(path) as f:
        try:
            tar = tarfile.open(fileobj=f, mode="r:")
        except tarfile.TarError:
            yield RecordRef(path, f"{path}:<header>", None, None, PAYLOAD_JSON, Status.TRUNCATED_MEMBER)
            return
        while True:
            try:
                info = tar.next()
            except (tarfile.TarError, OSError, EOFError):
                truncated = True
                break
            if info is None:
                # tarfile also returns None for a header cut short or a missing
                # end-of-archive block: both are truncation.
                truncated = truncated or not _ends_properly(f, tar.offset, fsize)
                break
            if not info.isfile():
                continue
            sp = _split_name(info.name)
            if sp is None:
                continue
            stem, part = sp
            last_stem = stem
            loc = (info.offset_data, info.size)
            if info.offset_data + info.size > fsize:
                # The archive ends inside this member: it and its partner are lost.
                truncated = cut_in_member = True
                if stem in pending:
                    pending.pop(stem)
                    order.remove(stem)
                yield RecordRef(path, f"{path}:{stem}", None, None, PAYLOAD_JSON, Status.TRUNCATED_MEMBER)
                break
            d = pending.setdefault(stem, {})
            if stem not in order:
                order.append(stem)
            d[part] = loc
            if "jpg" in d and "json" in d:
                pending.pop(stem)
                order.remove(stem)
                yield RecordRef(path, f"{path}:{stem}", d["jpg"], d["json"], PAYLOAD_JSON)
    for stem in order:  # members whose partner never came
        # If the archive is cut right after a member, its partner was lost to
        # the truncation; any other lonely member is simply unpaired.
        status = Status.TRUNCATED_MEMBER if truncated and stem == last_stem else Status.UNPAIRED_MEMBER
        yield RecordRef(path, f"{path}:{stem}", None, None, PAYLOAD_JSON, status)
    if truncated and last_stem not in order and not cut_in_member:
        # Cut between records (inside a header, or no end-of-archive block): whatever
        # followed is lost; count the truncation once.
        yield RecordRef(path, f"{path}:<end>", None, None, PAYLOAD_JSON, Status.TRUNCATED_MEMBER)


def _ends_properly(f: IO[bytes], offset: int, fsize: int) -> bool:
    """Whether a tar whose last header ended at ``offset`` has its end-of-archive block
    there (a zero block; Python's ``tarfile`` stops silently without one)."""
    if fsize - offset < tarfile.BLOCKSIZE:
        return False
    f.seek(offset)
    return f.read(tarfile.BLOCKSIZE) == bytes(tarfile.BLOCKSIZE)


def _iter_folder_refs(path: str) -> Iterator[RecordRef]:
    groups: dict[str, dict[str, str]] = {}
    for name in os.listdir(path):
        sp = _split_name(name)
        if sp is not None:
            groups.setdefault(sp[0], {})[sp[1]] = os.path.join(path, name)
    for stem in sorted(groups, key=_natural_key):
        d = groups[stem]
        if "jpg" in d and "json" in d:
            yield RecordRef(path, f"{path}:{stem}", d["jpg"], d["json"], PAYLOAD_JSON)
        else:
            yield RecordRef(path, f"{path}:{stem}", None, None, PAYLOAD_JSON, Status.UNPAIRED_MEMBER)


def _iter_tfrecord_refs(path: str) -> Iterator[RecordRef]:
    # TFRecord framing: uint64 length, uint32 crc(length), data, uint32 crc(data).
    fsize = _size(path)
    with _open(path) as f:
        offset, i = 0, 0
        while offset < fsize:
            f.seek(offset)
            head = f.read(12)
            if len(head) < 12:
                yield RecordRef(path, f"{path}:{i}", None, None, PAYLOAD_TFDS, Status.TRUNCATED_MEMBER)
                return
            (length,) = struct.unpack("<Q", head[:8])
            if offset + 12 + length + 4 > fsize:
                yield RecordRef(path, f"{path}:{i}", None, None, PAYLOAD_TFDS, Status.TRUNCATED_MEMBER)
                return
            yield RecordRef(path, f"{path}:{i}", None, (offset + 12, length), PAYLOAD_TFDS)
            offset += 12 + length + 4
            i += 1


def iter_refs(path: str, kind: str | None = None) -> Iterator[RecordRef]:
    """Records of one shard, in stored order, without reading their data."""
    kind = kind or shard_kind(path)
    if kind == KIND_TAR:
        return _iter_tar_refs(path)
    if kind == KIND_FOLDER:
        return _iter_folder_refs(path)
    if kind == KIND_TFDS:
        return _iter_tfrecord_refs(path)
    raise ValueError(f"unknown shard kind {kind!r}")


class Loader:
    """Reads the bytes of :class:`RecordRef` records, caching open shard files."""

    def __init__(self, max_open: int = 16):
        self._files: dict[str, IO[bytes]] = {}
        self._max_open = max_open

    def _read(self, shard: str, loc: tuple[int, int] | str) -> bytes:
        if isinstance(loc, str):
            with _open(loc) as f:
                return f.read()
        f = self._files.get(shard)
        if f is None:
            if len(self._files) >= self._max_open:
                old = next(iter(self._files))
                self._files.pop(old).close()
            f = self._files[shard] = _open(shard)
        off, size = loc
        f.seek(off)
        data = f.read(size)
        if len(data) != size:
            raise EOFError(f"short read in {shard} at {off}")
        return data

    def load(self, ref: RecordRef) -> tuple[bytes, bytes]:
        """``(jpeg_bytes, payload_bytes)``; jpeg is b"" for TFDS (inside the payload).

        Raises:
          OSError / EOFError: the data cannot be read.
        """
        jpeg = self._read(ref.shard, ref.jpeg) if ref.jpeg is not None else b""
        payload = self._read(ref.shard, ref.payload) if ref.payload is not None else b""
        return jpeg, payload

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def _parse_json_payload(payload: bytes) -> Annotations:
    try:
        rec = json.loads(payload)
        img = rec["image"]
        image_id, height, width = int(img["image_id"]), int(img["height"]), int(img["width"])
        anns = rec["annotations"]
        if not isinstance(anns, list):
            raise TypeError("annotations is not a list")
        sizes = np.zeros((len(anns), 2), np.int64)
        counts = []
        for i, a in enumerate(anns):
            seg = a["segmentation"]
            sizes[i] = [int(seg["size"][0]), int(seg["size"][1])]
            c = seg["counts"]
            if not isinstance(c, str):
                raise TypeError("segmentation.counts is not a compressed RLE string")
            counts.append(c.encode("ascii"))
    except (ValueError, KeyError, TypeError, IndexError, UnicodeError) as e:
        raise PayloadError(f"bad SA-1B JSON: {type(e).__name__}: {e}") from e
    return Annotations(image_id, height, width, sizes, counts)


def _feature(ex, key: str):
    f = ex.features.feature
    if key not in f:
        raise KeyError(key)
    return f[key]


def _parse_tfds_payload(payload: bytes) -> Annotations:
    from tensorflow.core.example import example_pb2  # protobuf only, no TF runtime use

    try:
        ex = example_pb2.Example.FromString(payload)
        jpeg = _feature(ex, "image/content").bytes_list.value[0]
        image_id = int(_feature(ex, "image/image_id").int64_list.value[0])
        height = int(_feature(ex, "image/height").int64_list.value[0])
        width = int(_feature(ex, "image/width").int64_list.value[0])
        counts = list(_feature(ex, "annotations/segmentation/counts").bytes_list.value)
        sizes = np.asarray(_feature(ex, "annotations/segmentation/size").int64_list.value, np.int64).reshape(
            -1, 2
        )
        if len(sizes) != len(counts):
            raise ValueError("counts/size length mismatch")
    except Exception as e:  # protobuf DecodeError, KeyError, IndexError ...
        raise PayloadError(f"bad TFDS segment_anything example: {type(e).__name__}: {e}") from e
    return Annotations(image_id, height, width, sizes, counts, jpeg=bytes(jpeg))


def parse_payload(payload: bytes, payload_kind: int) -> Annotations:
    """Parse an annotation payload.

    Raises:
      PayloadError: malformed payload.
    """
    if payload_kind == PAYLOAD_JSON:
        return _parse_json_payload(payload)
    if payload_kind == PAYLOAD_TFDS:
        return _parse_tfds_payload(payload)
    raise ValueError(f"unknown payload kind {payload_kind}")
