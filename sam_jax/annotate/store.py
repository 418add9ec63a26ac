"""Storage of the annotation tool: one SA-1B JSON file per image (Kirillov et al. 2023,
section 4, "assisted-manual" and "semi-automatic" stages; the format of section 5).

``ANNOTATIONS_DIR/<stem>.json`` is an SA-1B document (see ``sam_jax.sa1b_json``)
whose annotations carry two more keys, ``source`` (``"manual"`` or ``"auto"``) and
``seconds`` (time the annotator spent on the mask; 0 for prefilled masks), plus a
top-level ``"annotate"`` object with the tool's state: the next annotation id,
whether the image was prefilled, and the undo history. Readers of SA-1B ignore
the extra keys.

Every change runs under a lock for the image (a process-wide ``threading.Lock``
and an ``fcntl.flock`` on ``ANNOTATIONS_DIR/.locks/<stem>.lock`` for other
processes), re-reads the file, applies the change and writes the file atomically
(temporary file + ``os.replace``). Two browser tabs, or two servers, on the same
folder therefore merge their edits instead of overwriting each other, and a
killed server loses nothing that was accepted. No state lives only in memory, so
a restarted server resumes from the files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import statistics
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sam_jax.atomic_io import atomic_open, write_json

SOURCES = ("manual", "auto")
HISTORY_LIMIT = 200


class StoreError(Exception):
    """An annotation file cannot be used (unreadable, or not an SA-1B document)."""


class NothingToUndo(Exception):
    """Undo on an image without an undoable change."""


def image_id_of(file_name: str) -> int:
    """A stable 48-bit SA-1B ``image_id`` for an image file name."""
    return int.from_bytes(hashlib.sha1(file_name.encode()).digest()[:6], "big")


class AnnotationStore:
    """Per-image SA-1B JSON files in ``out_dir`` (see the module docstring)."""

    def __init__(self, out_dir: str | os.PathLike) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock_dir = self.out_dir / ".locks"
        self._lock_dir.mkdir(exist_ok=True)
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def path(self, stem: str) -> Path:
        return self.out_dir / f"{stem}.json"

    # ------------------------------------------------------------------ reading

    def read(self, stem: str) -> dict[str, Any] | None:
        """The document of image ``stem``, or None if it has none yet.

        Raises:
          StoreError: the file exists but is not a readable SA-1B document.
        """
        p = self.path(stem)
        try:
            text = p.read_text()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read {p.name}: {e}") from None
        try:
            doc = json.loads(text)
        except ValueError as e:
            doc, problem = None, f"bad JSON: {e}"
        else:
            problem = (
                "no 'image' object"
                if not isinstance(doc, dict) or not isinstance(doc.get("image"), dict)
                else "no 'annotations' list"
                if not isinstance(doc.get("annotations"), list)
                else next(
                    (
                        f"annotation {i} lacks an integer id or a COCO RLE segmentation"
                        for i, a in enumerate(doc["annotations"])
                        if not _valid_annotation(a)
                    ),
                    None,
                )
            )
        if problem:
            raise StoreError(
                f"annotation file {p.name} is not an SA-1B document ({problem}); fix or move it away"
            )
        return doc

    # ------------------------------------------------------------------ writing

    @contextlib.contextmanager
    def _locked(self, stem: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(stem, threading.Lock())
        with lock, open(self._lock_dir / f"{stem}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def edit(self, stem: str, image: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Lock image ``stem``, yield its current document (a new one with ``image`` as
        its image record if none exists), and write it back atomically afterwards if
        it changed (not if the body raised)."""
        with self._locked(stem):
            doc = self.read(stem) or {"image": dict(image), "annotations": []}
            state = doc.setdefault("annotate", {})
            state.setdefault(
                "next_id", 1 + max((int(a.get("id", -1)) for a in doc["annotations"]), default=-1)
            )
            state.setdefault("prefilled", False)
            state.setdefault("history", [])
            before = json.dumps(doc)
            yield doc
            state["history"] = state["history"][-HISTORY_LIMIT:]
            if json.dumps(doc) != before:
                write_json(self.path(stem), doc)

    def accept(
        self, stem: str, image: dict[str, Any], record: dict[str, Any], source: str, seconds: float
    ) -> int:
        """Append one annotation (``sam_jax.sa1b_json.mask_record`` without ``id``); its id."""
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
        with self.edit(stem, image) as doc:
            ann_id = _new_id(doc)
            doc["annotations"].append(
                {"id": ann_id, **record, "source": source, "seconds": round(float(seconds), 3)}
            )
            doc["annotate"]["history"].append({"op": "accept", "id": ann_id})
        return ann_id

    def prefill(self, stem: str, image: dict[str, Any], records: list[dict[str, Any]]) -> int | None:
        """Add automatic masks once per image (marked ``auto``, not undoable); the number
        added, or None if the image was prefilled before."""
        with self.edit(stem, image) as doc:
            if doc["annotate"]["prefilled"]:
                return None
            for r in records:
                doc["annotations"].append({"id": _new_id(doc), **r, "source": "auto", "seconds": 0.0})
            doc["annotate"]["prefilled"] = True
        return len(records)

    def delete(self, stem: str, image: dict[str, Any], ann_id: int) -> bool:
        """Remove annotation ``ann_id``; False if the image has no such annotation."""
        with self.edit(stem, image) as doc:
            anns = doc["annotations"]
            idx = next((i for i, a in enumerate(anns) if a.get("id") == ann_id), None)
            if idx is None:
                return False
            removed = anns.pop(idx)
            doc["annotate"]["history"].append({"op": "delete", "index": idx, "annotation": removed})
        return True

    def undo(self, stem: str, image: dict[str, Any]) -> dict[str, Any]:
        """Revert the last accept or delete on image ``stem``; ``{"undone": op, "id": id}``.

        Raises:
          NothingToUndo: no accept or delete left to revert.
        """
        with self.edit(stem, image) as doc:
            history = doc["annotate"]["history"]
            anns = doc["annotations"]
            while history:
                last = history.pop()
                if last["op"] == "accept":
                    idx = next((i for i, a in enumerate(anns) if a.get("id") == last["id"]), None)
                    if idx is not None:  # else deleted since: nothing left to revert
                        anns.pop(idx)
                        return {"undone": "accept", "id": last["id"]}
                elif last["op"] == "delete":
                    ann = last["annotation"]
                    anns.insert(min(int(last["index"]), len(anns)), ann)
                    return {"undone": "delete", "id": ann.get("id")}
            raise NothingToUndo(f"nothing to undo on {stem}")


def _valid_annotation(a: Any) -> bool:
    seg = a.get("segmentation") if isinstance(a, dict) else None
    return (
        isinstance(a, dict)
        and type(a.get("id")) is int
        and isinstance(seg, dict)
        and isinstance(seg.get("counts"), str)
        and isinstance(seg.get("size"), list)
    )


def _new_id(doc: dict[str, Any]) -> int:
    ann_id = int(doc["annotate"]["next_id"])
    doc["annotate"]["next_id"] = ann_id + 1
    return ann_id


# ----------------------------------------------------------------------------- statistics


def annotation_stats(out_dir: str | os.PathLike) -> dict[str, Any]:
    """Figures of an annotation folder (the paper reports seconds per mask and masks per
    image for each stage): counts by source, masks per annotated image, and the seconds
    the annotators spent per manual mask."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise ValueError(f"{out_dir} is not a folder")
    per_image, seconds, unreadable = [], [], []
    counts = {s: 0 for s in SOURCES}
    for p in sorted(out_dir.glob("*.json")):
        try:
            doc = json.loads(p.read_text())
            anns = doc["annotations"]
        except (OSError, ValueError, KeyError, TypeError):
            unreadable.append(p.name)
            continue
        if not anns:
            continue
        per_image.append(len(anns))
        for a in anns:
            src = a.get("source", "auto")
            counts[src if src in counts else "auto"] += 1
            if src == "manual" and isinstance(a.get("seconds"), (int, float)):
                seconds.append(float(a["seconds"]))
    return {
        "images_annotated": len(per_image),
        "masks": sum(per_image),
        "manual_masks": counts["manual"],
        "auto_masks": counts["auto"],
        "masks_per_image": statistics.fmean(per_image) if per_image else 0.0,
        "seconds_per_manual_mask": statistics.fmean(seconds) if seconds else None,
        "median_seconds_per_manual_mask": statistics.median(seconds) if seconds else None,
        "unreadable_files": unreadable,
    }


def format_stats(stats: dict[str, Any]) -> str:
    """Human-readable lines of :func:`annotation_stats`."""
    spm = stats["seconds_per_manual_mask"]
    lines = [
        f"images annotated:        {stats['images_annotated']}",
        (
            f"masks:                   {stats['masks']} ({stats['manual_masks']} manual, "
            f"{stats['auto_masks']} auto)"
        ),
        f"masks per image:         {stats['masks_per_image']:.2f}",
        "seconds per manual mask: "
        + ("-" if spm is None else f"{spm:.2f} (median {stats['median_seconds_per_manual_mask']:.2f})"),
    ]
    if stats["unreadable_files"]:
        lines.append(f"unreadable files:        {', '.join(stats['unreadable_files'])}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- export


def export_shard(store: AnnotationStore, images: list[tuple[str, Path]], dest: Path) -> dict[str, Any]:
    """Write the annotated images as one SA-1B tar shard (``<stem>.jpg`` + ``<stem>.json``
    pairs, what ``data.pipeline`` reads), atomically. JPEGs are stored as they are; other
    formats are re-encoded as JPEG (quality 95). The JSON keeps only the SA-1B keys.

    Args:
      images: ``(stem, image path)`` of every image in the folder.
    Returns:
      ``{"path", "images", "masks"}``.
    """
    with atomic_open(dest, "wb") as f, tarfile.open(fileobj=f, mode="w") as tar:
        n_images, n_masks = _write_pairs(tar, store, images)
    return {"path": str(dest), "images": n_images, "masks": n_masks}


_SA1B_KEYS = (
    "id",
    "segmentation",
    "bbox",
    "area",
    "predicted_iou",
    "stability_score",
    "crop_box",
    "point_coords",
)


def _write_pairs(
    tar: tarfile.TarFile, store: AnnotationStore, images: list[tuple[str, Path]]
) -> tuple[int, int]:
    from PIL import Image

    n_images = n_masks = 0
    for stem, image_path in images:
        doc = store.read(stem)
        if not doc or not doc["annotations"]:
            continue
        if image_path.suffix.lower() in (".jpg", ".jpeg"):
            jpeg = image_path.read_bytes()
        else:
            buf = io.BytesIO()
            with Image.open(image_path) as im:
                im.convert("RGB").save(buf, "JPEG", quality=95)
            jpeg = buf.getvalue()
        out = {
            "image": dict(doc["image"], file_name=f"{stem}.jpg"),
            "annotations": [{k: a[k] for k in _SA1B_KEYS if k in a} for a in doc["annotations"]],
        }
        for name, data in ((f"{stem}.jpg", jpeg), (f"{stem}.json", json.dumps(out).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        n_images += 1
        n_masks += len(out["annotations"])
    return n_images, n_masks


__all__ = [
    "SOURCES",
    "AnnotationStore",
    "NothingToUndo",
    "StoreError",
    "annotation_stats",
    "export_shard",
    "format_stats",
    "image_id_of",
]
