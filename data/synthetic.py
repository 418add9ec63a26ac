"""Deterministic synthetic SA-1B generator.

Writes real SA-1B-format tar shards (``sa_000000.tar``, ...), each holding
``sa_<id>.jpg`` + ``sa_<id>.json`` member pairs, so that the whole input stack
(readers, RLE decoding, the tf.data pipeline, training) can be exercised without
downloading anything.

Scene model (all drawn with PIL polygon rasterisation + numpy, vectorised):

* a smooth, coloured, textured background (upsampled low-resolution noise plus
  fine grain);
* ``num_objects`` objects painted back to front (painter's algorithm), so later
  objects occlude earlier ones. Shapes: rotated ellipses, rotated rectangles,
  random polygons (star-convex) and blobs (radial Fourier curves); sizes are
  log-uniform between ~2 % and ~45 % of the shorter side; every object has its
  own colour and a sinusoidal texture;
* part-whole nesting: an object may carry 0-3 *parts* (smaller shapes clipped
  to the object, painted in a different colour). The whole object (including
  its parts) and each part are annotated as separate masks, so a point inside a
  part is genuinely ambiguous (part vs whole), as in SA-1B.

Every annotation is the *visible* region (after occlusion) and is stored as a
COCO compressed RLE produced by ``pycocotools.mask.encode`` on a
Fortran-ordered uint8 array, with ``counts`` decoded to ``str``. The JSON
follows the SA-1B schema::

    {"image": {"image_id", "width", "height", "file_name"},
     "annotations": [{"id", "segmentation": {"size": [h, w], "counts": str},
                      "bbox": [x, y, w, h], "area", "predicted_iou",
                      "stability_score", "crop_box": [x, y, w, h],
                      "point_coords": [[x, y]]}]}

``bbox`` follows SAM's automatic mask generator (which produced SA-1B):
``[x0, y0, x1 - x0, y1 - y0]`` where ``x1``/``y1`` are the *inclusive* maximum
column/row of the mask. ``point_coords`` is the centre of a mask pixel (x = col,
y = row). ``crop_box`` is the full image.

Everything is a pure function of ``(seed, index)``: :func:`generate_image`
returns the image and the ground-truth masks (for tests), and
:func:`write_shards` / the CLI write the shards::

    python -m data.synthetic --out DIR --num-images N --images-per-shard M \
        --seed S --short-side 1500
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import math
import os
import tarfile
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from sam_jax.atomic_io import write_json

__all__ = [
    "SyntheticImage",
    "generate_image",
    "sample_json",
    "encode_jpeg",
    "write_shards",
    "write_eval_set",
    "image_id_for",
    "main",
]


@dataclass
class SyntheticImage:
    """One generated image with its ground truth.

    Masks are kept as crops (mask inside its bounding box) so that generation
    stays cheap at SA-1B size; :attr:`masks` materialises the full stack.

    Attributes:
      image: (H, W, 3) uint8 RGB, *before* JPEG compression.
      crops: per annotation, ``(crop, (y0, x0))``: a bool crop of the mask whose
        top-left pixel is at row ``y0``, column ``x0``; in annotation order.
      parent: (N,) int, index (into the annotations) of the whole object a part
        belongs to, -1 for whole objects.
      image_id: the SA-1B image id.
    """

    image: np.ndarray
    crops: list[tuple[np.ndarray, tuple[int, int]]]
    parent: np.ndarray
    image_id: int

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def num_masks(self) -> int:
        return len(self.crops)

    def mask(self, i: int, order: str = "C") -> np.ndarray:
        """(H, W) bool full-resolution mask ``i``."""
        full = np.zeros((self.height, self.width), bool, order=order)
        crop, (y0, x0) = self.crops[i]
        full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return full

    @property
    def masks(self) -> np.ndarray:
        """(N, H, W) bool full-resolution masks (memory heavy at SA-1B size)."""
        out = np.zeros((self.num_masks, self.height, self.width), bool)
        for i, (crop, (y0, x0)) in enumerate(self.crops):
            out[i, y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return out


def image_id_for(index: int) -> int:
    """SA-1B-style id of the ``index``-th synthetic image (ids start at 1)."""
    return int(index) + 1


def _image_size(rng: np.random.Generator, short_side: int, aspect: float | None) -> tuple[int, int]:
    if aspect is None:
        aspect = float(rng.choice([1.0, 4.0 / 3.0, 1.5, 1.5, 1.5]))
    long_side = int(round(short_side * aspect))
    if rng.random() < 0.25:  # portrait
        return long_side, short_side
    return short_side, long_side


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int) -> np.ndarray:
    """(h, w, channels) float32 in ~[0, 1]: bilinearly upsampled random grid."""
    gh = max(2, int(round(cells * h / max(h, w))))
    gw = max(2, int(round(cells * w / max(h, w))))
    small = (rng.random((gh, gw, channels)) * 255).astype(np.uint8)
    mode = "RGB" if channels == 3 else "L"
    img = Image.fromarray(small if channels == 3 else small[..., 0], mode)
    up = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0
    return up.reshape(h, w, channels)


def _shape_polygon(rng: np.random.Generator, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of a random shape of radius ~r centred at (cx, cy)."""
    kind = rng.integers(4)
    theta0 = rng.uniform(0, 2 * np.pi)
    if kind == 0:  # rotated ellipse
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        a, b = r, r * rng.uniform(0.35, 1.0)
        x, y = a * np.cos(t), b * np.sin(t)
    elif kind == 1:  # rotated rectangle
        a, b = r, r * rng.uniform(0.3, 1.0)
        x = np.array([-a, a, a, -a])
        y = np.array([-b, -b, b, b])
    elif kind == 2:  # star-convex random polygon
        n = int(rng.integers(3, 10))
        t = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = r * rng.uniform(0.45, 1.0, n)
        x, y = rad * np.cos(t), rad * np.sin(t)
    else:  # blob: radial Fourier curve
        t = np.linspace(0, 2 * np.pi, 96, endpoint=False)
        rad = np.ones_like(t)
        for k in range(2, 6):
            rad += rng.uniform(0, 0.25) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        rad = r * rad / rad.max()
        x, y = rad * np.cos(t), rad * np.sin(t)
    c, s = np.cos(theta0), np.sin(theta0)
    xr, yr = c * x - s * y + cx, s * x + c * y + cy
    return list(zip(xr.tolist(), yr.tolist()))


def _raster(
    poly: list[tuple[float, float]], h: int, w: int
) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """Rasterise a polygon; returns (crop mask bool, (y0, y1, x0, x1)) or None if off-image."""
    xs = [p[0] for p in poly]
    ys = [p[1] for p in poly]
    x0, x1 = max(0, int(math.floor(min(xs)))), min(w, int(math.ceil(max(xs))) + 1)
    y0, y1 = max(0, int(math.floor(min(ys)))), min(h, int(math.ceil(max(ys))) + 1)
    if x1 - x0 < 1 or y1 - y0 < 1:
        return None
    canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(canvas).polygon([(x - x0, y - y0) for x, y in poly], fill=1)
    crop = np.asarray(canvas, dtype=bool)
    if not crop.any():
        return None
    return crop, (y0, y1, x0, x1)


def _texture(rng: np.random.Generator, hh: int, ww: int, base: np.ndarray | None = None) -> np.ndarray:
    """(hh, ww, 3) float32 colour texture of one object (about ``base``, random if None), 0..255."""
    drawn = rng.uniform(20, 235, 3).astype(np.float32)
    base = drawn if base is None else np.asarray(base, np.float32)
    amp = rng.uniform(5, 45)
    freq = rng.uniform(0.02, 0.25)
    ang = rng.uniform(0, np.pi)
    # sin(a x + b y + c) = sin(a x) cos(b y + c) + cos(a x) sin(b y + c): outer products.
    ax = freq * np.cos(ang) * np.arange(ww, dtype=np.float32)
    by = freq * np.sin(ang) * np.arange(hh, dtype=np.float32) + np.float32(rng.uniform(0, 6.3))
    wave = np.outer(np.cos(by), np.sin(ax)) + np.outer(np.sin(by), np.cos(ax))
    tint = rng.uniform(-1, 1, 3).astype(np.float32)
    return np.clip(base + amp * wave[..., None] * tint, 0, 255)


def _default_num_objects(short_side: int) -> int:
    # ~100 masks at SA-1B size (objects + ~1.5 parts each), a handful when tiny.
    if short_side >= 512:
        return 55
    return int(np.clip(short_side // 12, 3, 40))


def generate_image(
    seed: int,
    index: int,
    short_side: int = 1500,
    aspect: float | None = None,
    num_objects: int | None = None,
    min_area: int | None = None,
    palette: np.ndarray | None = None,
) -> SyntheticImage:
    """Generate image ``index`` of the synthetic dataset with seed ``seed``.

    Deterministic: the same arguments give bit-identical images and masks.

    Args:
      seed: dataset seed.
      index: image index within the dataset (0-based).
      short_side: shorter image side in pixels (1500 as in SA-1B, 96 for tests).
      aspect: long/short side ratio; ``None`` draws one of 1, 4/3, 3/2.
      num_objects: number of whole objects painted (default ~40 at SA-1B size,
        giving ~100 masks with parts).
      min_area: visible masks smaller than this (pixels) are not annotated.
      palette: optional ``(C, 3)`` RGB colours: a scene of *categories* told apart by
        colour (text-prompt tests). Object ``i`` is textured about colour
        ``palette[perm[i % C]]`` (a random permutation: distinct colours within an
        image while ``num_objects <= C``) and has no parts.

    Returns:
      A :class:`SyntheticImage`; masks are (N, H, W) bool visible regions.
    """
    rng = np.random.default_rng([int(seed), int(index), 0x5A1B])
    h, w = _image_size(rng, short_side, aspect)
    if num_objects is None:
        num_objects = _default_num_objects(short_side)
    if min_area is None:
        min_area = max(8, int(2e-5 * h * w))

    # Background: two octaves of smooth colour noise + fine grain.
    bg_col = rng.uniform(40, 215, 3).astype(np.float32)
    img = bg_col + 70 * (_smooth_noise(rng, h, w, 6, 3) - 0.5) + 30 * (_smooth_noise(rng, h, w, 40, 3) - 0.5)
    label = np.zeros((h, w), np.int32)  # 0 = background, i+1 = shape i
    shapes_parent: list[int] = []  # per painted shape: parent shape index or -1
    shapes_box: list[tuple[int, int, int, int]] = []  # (y0, y1, x0, x1)

    short = min(h, w)
    # Larger objects first (like a background-to-foreground scene), jittered.
    radii = np.exp(rng.uniform(np.log(0.02 * short), np.log(0.45 * short), num_objects))
    radii = np.sort(radii)[::-1] * rng.uniform(0.8, 1.2, num_objects)
    colours = None if palette is None else np.asarray(palette)[rng.permutation(len(palette))]
    for i, r in enumerate(radii):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        ras = _raster(_shape_polygon(rng, cx, cy, r), h, w)
        if ras is None:
            continue
        crop, (y0, y1, x0, x1) = ras
        obj_idx = len(shapes_parent)
        shapes_parent.append(-1)
        shapes_box.append((y0, y1, x0, x1))
        tex = _texture(rng, y1 - y0, x1 - x0, None if colours is None else colours[i % len(colours)])
        img[y0:y1, x0:x1][crop] = tex[crop]
        label[y0:y1, x0:x1][crop] = obj_idx + 1
        n_parts = int(rng.choice([0, 0, 1, 2, 3])) if r > 0.04 * short else 0
        if colours is not None:
            n_parts = 0
        if n_parts:
            ys, xs = np.nonzero(crop)
        for _ in range(n_parts):
            # A part: a smaller shape centred on a random pixel of the object,
            # clipped to the object.
            k = int(rng.integers(len(ys)))
            pr = r * rng.uniform(0.2, 0.5)
            pras = _raster(_shape_polygon(rng, xs[k] + x0 + 0.5, ys[k] + y0 + 0.5, pr), h, w)
            if pras is None:
                continue
            pcrop, (py0, py1, px0, px1) = pras
            oy0, oy1 = max(py0, y0), min(py1, y1)
            ox0, ox1 = max(px0, x0), min(px1, x1)
            if oy1 <= oy0 or ox1 <= ox0:
                continue
            pcrop = (
                pcrop[oy0 - py0 : oy1 - py0, ox0 - px0 : ox1 - px0]
                & crop[oy0 - y0 : oy1 - y0, ox0 - x0 : ox1 - x0]
            )
            if not pcrop.any():
                continue
            part_idx = len(shapes_parent)
            shapes_parent.append(obj_idx)
            shapes_box.append((oy0, oy1, ox0, ox1))
            ptex = _texture(rng, oy1 - oy0, ox1 - ox0)
            img[oy0:oy1, ox0:ox1][pcrop] = ptex[pcrop]
            label[oy0:oy1, ox0:ox1][pcrop] = part_idx + 1

    grain = rng.normal(0, 4, (h, w, 1)).astype(np.float32)
    image = np.clip(img + grain, 0, 255).astype(np.uint8)

    # Visible masks (computed inside each shape's box: a shape never extends
    # beyond it and a part never beyond its object). A whole object is its own
    # label or any of its parts' labels.
    n_shapes = len(shapes_parent)
    owner = np.full(n_shapes + 1, -1, np.int64)  # label -> whole-object index
    for i, p in enumerate(shapes_parent):
        owner[i + 1] = i if p < 0 else p
    areas_self = np.bincount(label.ravel(), minlength=n_shapes + 1)[1:]
    areas_whole = np.zeros(n_shapes, np.int64)
    np.add.at(areas_whole, owner[1:], areas_self)
    crops: list[tuple[np.ndarray, tuple[int, int]]] = []
    parent_out: list[int] = []
    kept: dict[int, int] = {}
    for i in range(n_shapes):
        y0, y1, x0, x1 = shapes_box[i]
        p = shapes_parent[i]
        if p < 0:
            if areas_whole[i] < min_area:
                continue
            m = owner[label[y0:y1, x0:x1]] == i
            kept[i] = len(crops)
        else:
            if areas_self[i] < min_area or p not in kept or areas_whole[p] == areas_self[i]:
                continue  # tiny, orphan, or the part is all that is visible of the object
            m = label[y0:y1, x0:x1] == i + 1
        # Tighten the crop to the visible mask.
        rows = np.flatnonzero(m.any(axis=1))
        cols = np.flatnonzero(m.any(axis=0))
        m = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        crops.append((np.ascontiguousarray(m), (y0 + int(rows[0]), x0 + int(cols[0]))))
        parent_out.append(-1 if p < 0 else kept[p])
    return SyntheticImage(
        image=image, crops=crops, parent=np.asarray(parent_out, np.int64), image_id=image_id_for(index)
    )


def encode_jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of an (H, W, 3) uint8 RGB image."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def sample_json(sample: SyntheticImage, seed: int) -> dict:
    """The SA-1B JSON record (as a dict) of a generated image."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng([int(seed), sample.image_id, 0x150])
    h, w = sample.height, sample.width
    anns = []
    full = np.zeros((h, w), np.uint8, order="F")
    for i, (crop, (y0, x0)) in enumerate(sample.crops):
        ch, cw = crop.shape
        full[y0 : y0 + ch, x0 : x0 + cw] = crop
        rle = mask_utils.encode(full)
        full[y0 : y0 + ch, x0 : x0 + cw] = 0
        ys, xs = np.nonzero(crop)
        k = int(rng.integers(len(ys)))
        anns.append(
            {
                "id": int(sample.image_id) * 1000 + i,
                "segmentation": {"size": [h, w], "counts": rle["counts"].decode("ascii")},
                # SAM AMG convention: inclusive max -> w = x1 - x0.
                "bbox": [float(x0), float(y0), float(cw - 1), float(ch - 1)],
                "area": int(len(ys)),
                "predicted_iou": float(rng.uniform(0.85, 1.0)),
                "stability_score": float(rng.uniform(0.9, 1.0)),
                "crop_box": [0.0, 0.0, float(w), float(h)],
                "point_coords": [[float(xs[k] + x0), float(ys[k] + y0)]],
            }
        )
    return {
        "image": {
            "image_id": int(sample.image_id),
            "width": w,
            "height": h,
            "file_name": f"sa_{sample.image_id}.jpg",
        },
        "annotations": anns,
    }


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0  # deterministic archives
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))


def _write_shard(
    out_dir: str,
    shard: int,
    *,
    num_images: int,
    images_per_shard: int,
    seed: int,
    short_side: int,
    aspect: float | None,
    num_objects: int | None,
    jpeg_quality: int,
    extract: bool,
    min_area: int | None,
    palette: np.ndarray | None,
) -> str:
    """Shard ``shard`` of :func:`write_shards` -> its tar path."""
    path = os.path.join(out_dir, f"sa_{shard:06d}.tar")
    folder = os.path.join(out_dir, f"sa_{shard:06d}")
    if extract:
        os.makedirs(folder, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for index in range(shard * images_per_shard, min(num_images, (shard + 1) * images_per_shard)):
            s = generate_image(seed, index, short_side, aspect, num_objects, min_area, palette)
            jpg = encode_jpeg(s.image, jpeg_quality)
            js = json.dumps(sample_json(s, seed)).encode("utf-8")
            stem = f"sa_{s.image_id}"
            _add_member(tar, stem + ".jpg", jpg)
            _add_member(tar, stem + ".json", js)
            if extract:
                with open(os.path.join(folder, stem + ".jpg"), "wb") as f:
                    f.write(jpg)
                with open(os.path.join(folder, stem + ".json"), "wb") as f:
                    f.write(js)
    return path


def write_shards(
    out_dir: str,
    num_images: int,
    images_per_shard: int,
    seed: int = 0,
    short_side: int = 1500,
    aspect: float | None = None,
    num_objects: int | None = None,
    jpeg_quality: int = 90,
    extract: bool = False,
    min_area: int | None = None,
    palette: np.ndarray | None = None,
    workers: int = 1,
) -> list[str]:
    """Write ``ceil(num_images / images_per_shard)`` SA-1B tar shards.

    Shard ``k`` is ``out_dir/sa_{k:06d}.tar`` and holds images
    ``k*images_per_shard ...`` as ``sa_<id>.jpg`` then ``sa_<id>.json``.
    With ``extract=True`` the pairs are (also) written to ``out_dir/sa_{k:06d}/``
    folders, the layout of extracted SA-1B archives. ``min_area``: visible masks
    smaller than this (pixels) are painted but not annotated (:func:`generate_image`).
    ``palette``: see :func:`generate_image`. ``workers`` > 1 writes shards in that many
    spawned processes (each image depends only on ``seed`` and its index: the same
    bytes); the calling script needs the ``if __name__ == "__main__":`` guard.

    Returns:
      The list of shard paths (tar files).
    """
    if num_images < 1 or images_per_shard < 1 or workers < 1:
        raise ValueError("num_images, images_per_shard and workers must be >= 1")
    os.makedirs(out_dir, exist_ok=True)
    job = functools.partial(
        _write_shard,
        out_dir,
        num_images=num_images,
        images_per_shard=images_per_shard,
        seed=seed,
        short_side=short_side,
        aspect=aspect,
        num_objects=num_objects,
        jpeg_quality=jpeg_quality,
        extract=extract,
        min_area=min_area,
        palette=palette,
    )
    shards = range(math.ceil(num_images / images_per_shard))
    if workers == 1 or len(shards) == 1:
        return [job(k) for k in shards]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: the caller may have started JAX or TensorFlow threads, which fork would copy
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(shards)), mp_context=spawn) as pool:
        return list(pool.map(job, shards))


def write_eval_set(
    out_dir: str,
    num_images: int,
    seed: int = 0,
    short_side: int = 1500,
    aspect: float | None = None,
    num_objects: int | None = None,
    jpeg_quality: int = 90,
) -> str:
    """Write an evaluation set of the same scenes in the formats benchmarks come in.

    ``out_dir/images/sa_<id>.jpg``, ``out_dir/instances.json`` (COCO instances, one
    category, compressed RLE, COCO ``bbox`` with exclusive maxima) and
    ``out_dir/edges/sa_<id>.png`` (edge ground truth: 255 on the boundary pixels of
    every annotated mask, the image border excluded). Returns the JSON path.
    """
    from pycocotools import mask as mask_utils
    from scipy import ndimage

    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "edges"), exist_ok=True)
    doc: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    for index in range(num_images):
        s = generate_image(seed, index, short_side, aspect, num_objects)
        name = f"sa_{s.image_id}"
        with open(os.path.join(out_dir, "images", name + ".jpg"), "wb") as f:
            f.write(encode_jpeg(s.image, jpeg_quality))
        doc["images"].append(
            {"id": s.image_id, "file_name": name + ".jpg", "height": s.height, "width": s.width}
        )
        edges = np.zeros((s.height, s.width), bool)
        for i in range(s.num_masks):
            m = s.mask(i, order="F")
            edges |= m & ~ndimage.binary_erosion(m, border_value=1)
            rle = mask_utils.encode(m.astype(np.uint8, order="F"))
            doc["annotations"].append(
                {
                    "id": s.image_id * 1000 + i,
                    "image_id": s.image_id,
                    "category_id": 1,
                    "segmentation": {"size": [s.height, s.width], "counts": rle["counts"].decode("ascii")},
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": 0,
                }
            )
        Image.fromarray(edges.astype(np.uint8) * 255).save(os.path.join(out_dir, "edges", name + ".png"))
    path = os.path.join(out_dir, "instances.json")
    write_json(path, doc)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write synthetic SA-1B tar shards.")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--num-images", type=int, required=True)
    p.add_argument("--images-per-shard", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--short-side", type=int, default=1500)
    p.add_argument(
        "--aspect", type=float, default=None, help="long/short ratio (default: random 1, 4/3, 3/2)"
    )
    p.add_argument("--num-objects", type=int, default=None)
    p.add_argument("--extract", action="store_true", help="also write extracted folders")
    p.add_argument("--workers", type=int, default=1, help="processes writing shards")
    p.add_argument(
        "--eval-set",
        action="store_true",
        help="write images/, instances.json (COCO) and edges/ instead of tar shards",
    )
    a = p.parse_args(argv)
    t0 = time.time()
    if a.eval_set:
        path = write_eval_set(a.out, a.num_images, a.seed, a.short_side, a.aspect, a.num_objects)
        print(json.dumps({"coco": path, "images": a.num_images, "seconds": round(time.time() - t0, 2)}))
        return
    paths = write_shards(
        a.out,
        a.num_images,
        a.images_per_shard,
        a.seed,
        a.short_side,
        a.aspect,
        a.num_objects,
        extract=a.extract,
        workers=a.workers,
    )
    print(
        json.dumps(
            {
                "shards": len(paths),
                "images": a.num_images,
                "seconds": round(time.time() - t0, 2),
                "out": a.out,
            }
        )
    )


if __name__ == "__main__":
    main()
