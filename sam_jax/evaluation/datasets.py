"""Evaluation datasets for the zero-shot transfer protocols (paper section 7, appendix D).

Three formats, one in-memory index (:class:`EvalDataset`):

* **COCO** (``kind="coco"``): an instances JSON plus an image folder;
  segmentations as polygons, uncompressed RLE (list counts) or compressed RLE
  (string counts). ``iscrowd`` annotations are not used as masks (COCOeval
  still sees them through :meth:`EvalDataset.coco_gt`, which keeps the file's
  own annotations).
* **SA-1B** (``kind="sa1b"``): per-image ``sa_<id>.json`` + ``sa_<id>.jpg``
  pairs, in a folder or in ``sa_*.tar`` archives (read with :mod:`data.sa1b`).
* **Instance label maps** (``kind="labelmap"``): an image folder and a label
  folder with the same file stems; a label map is a PNG or TIFF holding one
  integer id per instance and 0 for background (how many of the paper's 23
  point-prompt datasets, e.g. cell microscopy, are shipped).

Selection (:func:`load_dataset`): masks smaller than ``min_area`` pixels are
dropped; if more than ``max_masks`` remain, a seeded uniform subset of
``max_masks`` is kept over the whole dataset (the paper subsampled datasets of
more than 15k masks to about 10k). Images without a selected mask are dropped.

Images of any size are accepted. :func:`to_rgb_uint8` converts what the
predictor does not take: grayscale is repeated to three channels, RGBA loses
alpha, and images that are not 8-bit (16-bit, 32-bit, float; e.g. microscopy)
are rescaled linearly from their own minimum/maximum to 0-255.
"""

from __future__ import annotations

import glob
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from sam_jax.image_files import IMAGE_SUFFIXES

KINDS = ("coco", "sa1b", "labelmap")


class DatasetError(ValueError):
    """A dataset that cannot be read (missing files, malformed annotations)."""


# ----------------------------------------------------------------------------- images


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Any ``(H, W)``, ``(H, W, 1|3|4)`` image -> ``(H, W, 3)`` uint8 RGB (module doc)."""
    from sam_jax.predictor import as_rgb_uint8

    a = np.asarray(array)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        if a.ndim == 3 and a.shape[-1] == 4:
            a = a[..., :3]
        a = a.astype(np.float64)
        finite = np.isfinite(a)
        lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 0.0)
        scaled = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        a = np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)
    return as_rgb_uint8(a, "RGB")


def read_array(source: str | bytes) -> np.ndarray:
    """Pixels of an image file (path or bytes) at their stored bit depth."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LA"):
                im = im.convert("RGBA" if "A" in im.mode else "RGB")
            return np.asarray(im)
    except (OSError, ValueError) as e:
        name = "<bytes>" if isinstance(source, bytes) else source
        if not isinstance(source, bytes) and str(source).lower().endswith((".tif", ".tiff")):
            try:
                import tifffile

                return np.asarray(tifffile.imread(source))
            except Exception:  # noqa: BLE001 - report PIL's error below
                pass
        raise DatasetError(f"cannot read image {name}: {e}") from None


# ----------------------------------------------------------------------------- index


@dataclass
class Annotation:
    """One ground-truth mask.

    Attributes:
      id: annotation id (unique within the dataset).
      area: mask area in pixels.
      bbox: ``[x, y, w, h]``.
      category_id: category (1 when the format has none).
      segmentation: format-specific source of the mask (decoded by the image).
    """

    id: int
    area: float
    bbox: list[float]
    category_id: int
    segmentation: Any


@dataclass
class EvalImage:
    """One image and its selected ground-truth masks.

    ``load()`` returns ``(image (H, W, 3) uint8, masks (M, H, W) bool)``, masks in
    the order of :attr:`annotations`.
    """

    image_id: int
    file_name: str
    height: int
    width: int
    annotations: list[Annotation]
    _loader: Callable[[EvalImage, bool], tuple[np.ndarray, np.ndarray | None]] = field(repr=False)

    def load_image(self) -> np.ndarray:
        """The image alone, ``(H, W, 3)`` uint8 (no mask decoding)."""
        return self._loader(self, False)[0]

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        image, masks = self._loader(self, True)
        if image.shape[:2] != (self.height, self.width):
            raise DatasetError(
                f"{self.file_name}: image is {image.shape[:2]}, annotations say {(self.height, self.width)}"
            )
        return image, masks


@dataclass
class EvalDataset:
    """A list of :class:`EvalImage` plus what COCOeval needs.

    Attributes:
      name: a short name (folder or file stem).
      kind: ``"coco"``, ``"sa1b"`` or ``"labelmap"``.
      images: the selected images.
      categories: COCO categories (with LVIS ``frequency`` tags when present).
      coco_json: the source COCO dict for ``kind="coco"`` (else None).
      total_masks: masks before subsampling (after the area filter).
    """

    name: str
    kind: str
    images: list[EvalImage]
    categories: list[dict] = field(default_factory=lambda: [{"id": 1, "name": "object"}])
    coco_json: dict | None = None
    total_masks: int = 0

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[EvalImage]:
        return iter(self.images)

    @property
    def num_masks(self) -> int:
        return sum(len(im.annotations) for im in self.images)

    def summary(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "num_images": len(self.images),
            "num_masks": self.num_masks,
            "masks_before_subsampling": self.total_masks,
        }

    def coco_gt(self, all_annotations: bool = True) -> dict:
        """A COCO ground-truth dict of the selected images for pycocotools.

        For COCO sources with ``all_annotations`` the file's own annotations of
        those images (crowd regions included, as COCOeval expects); otherwise the
        selected masks as compressed RLE, ``iscrowd = 0``.
        """
        ids = {im.image_id for im in self.images}
        if self.coco_json is not None and all_annotations:
            return {
                "images": [i for i in self.coco_json["images"] if i["id"] in ids],
                "annotations": [a for a in self.coco_json["annotations"] if a["image_id"] in ids],
                "categories": self.coco_json.get("categories") or self.categories,
            }
        from pycocotools import mask as mask_utils

        anns = []
        for im in self.images:
            _, masks = im.load()
            for ann, m in zip(im.annotations, masks):
                rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                anns.append(
                    {
                        "id": ann.id,
                        "image_id": im.image_id,
                        "category_id": ann.category_id,
                        "segmentation": rle,
                        "area": float(m.sum()),
                        "bbox": list(ann.bbox),
                        "iscrowd": 0,
                    }
                )
        return {
            "images": [
                {"id": im.image_id, "file_name": im.file_name, "height": im.height, "width": im.width}
                for im in self.images
            ],
            "annotations": anns,
            "categories": self.categories,
        }


# ----------------------------------------------------------------------------- COCO


def _decode_coco_segmentation(seg: Any, h: int, w: int) -> np.ndarray:
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):  # polygons
        polys = [p for p in seg if len(p) >= 6]
        if not polys:
            return np.zeros((h, w), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):
        rle = mask_utils.frPyObjects(seg, h, w)
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)):
        counts = seg["counts"]
        rle = {"size": list(seg["size"]), "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
        raise DatasetError(f"unknown segmentation format: {type(seg).__name__}")
    mask = mask_utils.decode(rle).astype(bool)
    if mask.shape != (h, w):
        raise DatasetError(f"segmentation of size {mask.shape} in an image of size {(h, w)}")
    return mask


def _coco_loader(image_dir: str):
    def load(im: EvalImage, with_masks: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        path = os.path.join(image_dir, im.file_name)
        if not os.path.isfile(path):
            raise DatasetError(f"image file {path} does not exist")
        image = to_rgb_uint8(read_array(path))
        if not with_masks:
            return image, None
        masks = (
            np.stack([_decode_coco_segmentation(a.segmentation, im.height, im.width) for a in im.annotations])
            if im.annotations
            else np.zeros((0, im.height, im.width), bool)
        )
        return image, masks

    return load


def _file_name(info: dict) -> str:
    """An image's path below the image folder; LVIS v1 gives only ``coco_url``, whose
    last two parts (``val2017/<id>.jpg``) are used, as in the COCO folder layout."""
    if "file_name" in info:
        return info["file_name"]
    if "coco_url" in info:
        return "/".join(info["coco_url"].split("/")[-2:])
    raise DatasetError(f"image {info.get('id')} has neither file_name nor coco_url")


def _read_coco(path: str, image_dir: str | None) -> tuple[list[EvalImage], dict]:
    try:
        with open(path) as f:
            doc = json.load(f)
        images, anns = doc["images"], doc["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{path} is not a COCO instances JSON: {e}") from None
    if image_dir is None:
        parent = os.path.dirname(os.path.abspath(path))
        image_dir = next((d for d in (os.path.join(parent, "images"), parent) if os.path.isdir(d)), parent)
    if not os.path.isdir(image_dir):
        raise DatasetError(f"image folder {image_dir} does not exist")
    by_image: dict[int, list[Annotation]] = {}
    for a in anns:
        if a.get("iscrowd", 0):
            continue
        try:
            by_image.setdefault(int(a["image_id"]), []).append(
                Annotation(
                    id=int(a["id"]),
                    area=float(a["area"]),
                    bbox=[float(v) for v in a["bbox"]],
                    category_id=int(a.get("category_id", 1)),
                    segmentation=a["segmentation"],
                )
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{path}: malformed annotation {a.get('id')}: {e}") from None
    loader = _coco_loader(image_dir)
    out = [
        EvalImage(
            image_id=int(i["id"]),
            file_name=_file_name(i),
            height=int(i["height"]),
            width=int(i["width"]),
            annotations=by_image.get(int(i["id"]), []),
            _loader=loader,
        )
        for i in images
    ]
    return out, doc


# ----------------------------------------------------------------------------- SA-1B


def _read_sa1b(path: str) -> list[EvalImage]:
    try:
        from data.sa1b import Loader, iter_refs, resolve_shards, shard_kind
    except ImportError as e:
        raise DatasetError(
            f"reading SA-1B shards ({path}) needs the repository's data/ package: run from the "
            f"root of a checkout as `python -m sam_jax.cli ...` ({e})"
        ) from None

    if os.path.isdir(path):
        if glob.glob(os.path.join(path, "*.json")):
            shards = [path]
        else:
            shards = sorted(glob.glob(os.path.join(path, "*.tar"))) or sorted(
                d
                for d in glob.glob(os.path.join(path, "*"))
                if os.path.isdir(d) and glob.glob(os.path.join(d, "*.json"))
            )
    else:
        try:
            shards = [s for s in resolve_shards(path) if shard_kind(s) in ("tar", "folder")]
        except (FileNotFoundError, ValueError) as e:
            raise DatasetError(f"no SA-1B data at {path}: {e}") from None
    if not shards:
        raise DatasetError(f"no SA-1B data (sa_*.json + sa_*.jpg pairs or sa_*.tar) at {path}")
    reader = Loader()
    out = []
    for shard in shards:
        for ref in iter_refs(shard):
            if ref.status != 0:
                continue
            _, payload = reader.load(ref)
            try:
                doc = json.loads(payload)
                info = doc["image"]
                anns = [
                    Annotation(
                        id=int(a["id"]),
                        area=float(a["area"]),
                        bbox=[float(v) for v in a["bbox"]],
                        category_id=1,
                        segmentation=a["segmentation"],
                    )
                    for a in doc["annotations"]
                ]
            except (ValueError, KeyError, TypeError) as e:
                raise DatasetError(f"{ref.key}: malformed SA-1B JSON: {e}") from None

            def load(im: EvalImage, with_masks: bool = True, ref=ref):
                jpeg, _ = reader.load(ref)
                image = to_rgb_uint8(read_array(jpeg))
                if not with_masks:
                    return image, None
                masks = [
                    _decode_coco_segmentation(a.segmentation, im.height, im.width) for a in im.annotations
                ]
                return image, (np.stack(masks) if masks else np.zeros((0, im.height, im.width), bool))

            out.append(
                EvalImage(
                    image_id=int(info["image_id"]),
                    file_name=info.get("file_name", f"sa_{info['image_id']}.jpg"),
                    height=int(info["height"]),
                    width=int(info["width"]),
                    annotations=anns,
                    _loader=load,
                )
            )
    return out


# ----------------------------------------------------------------------------- label maps


def _stem_files(folder: str) -> dict[str, str]:
    if not os.path.isdir(folder):
        raise DatasetError(f"folder {folder} does not exist")
    return {
        os.path.splitext(n)[0]: os.path.join(folder, n)
        for n in sorted(os.listdir(folder))
        if n.lower().endswith(IMAGE_SUFFIXES)
    }


def _read_label_map(path: str) -> np.ndarray:
    lab = read_array(path)
    if lab.ndim == 3:
        if not (np.all(lab[..., :1] == lab[..., 1:3]) if lab.shape[-1] >= 3 else True):
            raise DatasetError(f"label map {path} has colour channels; expected one integer id per pixel")
        lab = lab[..., 0]
    if lab.ndim != 2 or not np.issubdtype(lab.dtype, np.integer):
        raise DatasetError(f"label map {path} must be a 2-D integer image, got {lab.dtype} {lab.shape}")
    return lab.astype(np.int64)


def _read_labelmaps(image_dir: str, label_dir: str) -> list[EvalImage]:
    images, labels = _stem_files(image_dir), _stem_files(label_dir)
    stems = [s for s in images if s in labels]
    if not stems:
        raise DatasetError(f"no image in {image_dir} has a label map with the same name in {label_dir}")
    out = []
    for image_id, stem in enumerate(stems):
        lab = _read_label_map(labels[stem])
        ids = np.unique(lab)
        ids = ids[ids != 0]
        areas = np.bincount(np.searchsorted(ids, lab[lab != 0]), minlength=len(ids))
        anns = []
        for lid, area in zip(ids, areas, strict=True):
            ys, xs = np.nonzero(lab == lid)
            anns.append(
                Annotation(
                    id=image_id * 100000 + int(lid),
                    area=float(area),
                    bbox=[
                        float(xs.min()),
                        float(ys.min()),
                        float(xs.max() - xs.min() + 1),
                        float(ys.max() - ys.min() + 1),
                    ],
                    category_id=1,
                    segmentation=int(lid),
                )
            )

        def load(im: EvalImage, with_masks: bool = True, ipath=images[stem], lpath=labels[stem]):
            if not with_masks:
                return to_rgb_uint8(read_array(ipath)), None
            lab = _read_label_map(lpath)
            ids = np.array([a.segmentation for a in im.annotations], np.int64)
            return to_rgb_uint8(read_array(ipath)), lab[None] == ids[:, None, None]

        out.append(
            EvalImage(
                image_id=image_id,
                file_name=os.path.basename(images[stem]),
                height=int(lab.shape[0]),
                width=int(lab.shape[1]),
                annotations=anns,
                _loader=load,
            )
        )
    return out


# ----------------------------------------------------------------------------- entry point


def detect_kind(data: str, labels: str | None = None) -> str:
    """``"coco"`` for a JSON file, ``"labelmap"`` when a label folder is given, else ``"sa1b"``."""
    if labels is not None:
        return "labelmap"
    if os.path.isfile(data) and data.lower().endswith(".json"):
        return "coco"
    return "sa1b"


def select_masks(
    images: list[EvalImage], min_area: float = 0, max_masks: int | None = None, seed: int = 0
) -> tuple[list[EvalImage], int]:
    """Drop masks under ``min_area``; keep a seeded subset of ``max_masks`` over the
    dataset if there are more. Returns the images that still hold a mask and the
    number of masks before subsampling."""
    for im in images:
        im.annotations = [a for a in im.annotations if a.area >= min_area and a.area > 0]
    total = sum(len(im.annotations) for im in images)
    if max_masks is not None and total > max_masks:
        keep = np.zeros(total, bool)
        keep[np.random.default_rng(seed).choice(total, size=int(max_masks), replace=False)] = True
        start = 0
        for im in images:
            n = len(im.annotations)
            im.annotations = [a for a, k in zip(im.annotations, keep[start : start + n]) if k]
            start += n
    return [im for im in images if im.annotations], total


def load_dataset(
    data: str | os.PathLike,
    *,
    kind: str = "auto",
    images: str | None = None,
    labels: str | None = None,
    min_area: float = 0,
    max_masks: int | None = None,
    max_images: int | None = None,
    seed: int = 0,
    keep_empty: bool = False,
) -> EvalDataset:
    """Index an evaluation dataset (module doc).

    Args:
      data: COCO JSON file, SA-1B folder / tar / glob, or (label maps) the image folder.
      kind: ``"auto"`` (:func:`detect_kind`) or one of :data:`KINDS`.
      images: image folder of a COCO JSON (default: ``images/`` next to it, or its folder).
      labels: label-map folder (``kind="labelmap"``).
      min_area, max_masks, seed: mask selection (:func:`select_masks`).
      max_images: keep only the first ``max_images`` images (in file order).
      keep_empty: keep images without a selected mask (proposals, instances).
    """
    data = os.fspath(data)
    kind = detect_kind(data, labels) if kind == "auto" else kind
    if kind not in KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r}; known: {KINDS}")
    if not glob.glob(data):
        raise DatasetError(f"{data} does not exist")
    doc = None
    categories = [{"id": 1, "name": "object"}]
    if kind == "coco":
        ims, doc = _read_coco(data, images)
        categories = doc.get("categories") or categories
    elif kind == "sa1b":
        ims = _read_sa1b(data)
    else:
        if labels is None:
            raise DatasetError("label-map datasets need the label folder (labels=...)")
        ims = _read_labelmaps(data, labels)
    if max_images is not None:
        ims = ims[:max_images]
    selected, total = select_masks(list(ims), min_area, max_masks, seed)
    if keep_empty:
        selected = ims
    name = os.path.splitext(os.path.basename(os.path.normpath(data)))[0]
    return EvalDataset(
        name=name, kind=kind, images=selected, categories=categories, coco_json=doc, total_masks=total
    )


def masks_to_coco(images: Sequence[tuple[np.ndarray, Sequence[np.ndarray]]]) -> dict:
    """A COCO instances dict (one category) from ``[(image, masks)]``; file names are
    ``<index>.png``. For building small test and demo datasets."""
    from pycocotools import mask as mask_utils

    out: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    for i, (image, masks) in enumerate(images):
        h, w = image.shape[:2]
        out["images"].append({"id": i + 1, "file_name": f"{i}.png", "height": h, "width": w})
        for m in masks:
            rle = mask_utils.encode(np.asfortranarray(np.asarray(m, np.uint8)))
            out["annotations"].append(
                {
                    "id": len(out["annotations"]) + 1,
                    "image_id": i + 1,
                    "category_id": 1,
                    "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
    return out


__all__ = [
    "Annotation",
    "EvalImage",
    "EvalDataset",
    "DatasetError",
    "KINDS",
    "load_dataset",
    "select_masks",
    "detect_kind",
    "to_rgb_uint8",
    "read_array",
    "masks_to_coco",
]
