"""Automatic mask generation at dataset scale: images in, SA-1B tar shards out.

The third stage of the data engine (Kirillov et al. 2023, section 4) annotated 11M
images with no human in the loop: a 32x32 point grid with three masks per point,
predicted IoU >= 88 and stability >= 95 filters, NMS, zoomed-in overlapping crops
and small-region cleanup (Appendix B); the result is SA-1B (section 5). This module
runs :class:`~sam_jax.automatic_mask_generator.SamAutomaticMaskGenerator` over a
corpus and writes the dataset::

    sam-jax generate-shards IMAGES_DIR_OR_TARS... --out DIR [--preset sa1b] \\
        --checkpoint sam_vit_h_4b8939.pth --model-type vit_h

* **Inputs**: folders of images (searched recursively), image files, and image-only
  tar shards (members with image suffixes; other members are ignored). They are
  listed in a fixed order (natural sort of the paths, then tar order) and cut into
  work units of ``--images-per-shard`` consecutive images: unit ``k`` becomes
  ``DIR/sa_{k:06d}.tar``, and image ``i`` of the list gets id ``--id-offset + i``.
* **Outputs**: per image ``sa_<id>.jpg`` (the input's bytes, untouched: ``data/``
  decodes any format PIL reads) followed by ``sa_<id>.json`` (the SA-1B schema of
  :func:`sam_jax.sa1b_json.sa1b_record`), so ``data.pipeline`` reads the shards as
  SA-1B. Images without any mask and images that cannot be decoded are left out of
  the tar and listed in the unit's manifest.
* **Batching**: the crops of ``--embed-batch`` images are embedded together (one
  ``SamPredictor.set_images`` call, chunks of up to 8 per encoder call); each image
  is then decoded ``--points-per-batch`` grid points per decoder call (default 64 on
  a CPU, 256 on an accelerator) through the generator's ``generate(image,
  embedded_at=...)``.
* **Multi-host**: the process joins the run as training does
  (:func:`sam_jax.distributed.initialize_distributed`: TPU pods and SLURM
  automatically, else ``--coordinator-address/--num-processes/--process-id`` or
  ``SAM_JAX_COORDINATOR/NUM_PROCESSES/PROCESS_ID``); process ``p`` of ``P`` takes
  units ``p, p + P, p + 2P, ...``. No collective is used: processes never wait on
  each other, and the units' files say what is done.
* **Restartable**: each finished image's JSON is written atomically to
  ``DIR/.work/sa_{k:06d}/``; a finished unit's tar is written to a temporary file
  and renamed, then its manifest ``DIR/manifest/sa_{k:06d}.json`` (ids, sources,
  mask counts) marks it done and the work folder is removed. A restarted run (any
  number of processes) skips done units and done images, so no image is generated
  twice or lost. ``DIR/run.json`` records the inputs' fingerprint and the
  settings; a restart with other inputs or settings is refused.
* **Progress and figures**: a tqdm bar with images/s and masks/image; per run and
  process ``DIR/stats/run_<UTC time>_p<process>.json`` (images, masks, wall and
  CPU seconds, images/s).

``--preset sa1b`` is the paper's stage-3 setting: 32x32 grid, 2 crop layers (2x2 and
4x4 crops with 16x16 and 8x8 grids), predicted IoU > 0.88, stability >= 0.95, NMS
0.7 within and across crops, holes and islands under 100 px cleaned up, and masks
covering more than 95% of the image dropped. ``--preset default`` is the
generator's defaults (no crops, no cleanup).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sam_jax.atomic_io import atomic_open, write_json
from sam_jax.image_files import IMAGE_SUFFIXES

PRESETS: dict[str, dict[str, Any]] = {
    # The generator's defaults (paper Appendix B without crops or cleanup).
    "default": dict(
        points_per_side=32,
        pred_iou_thresh=0.88,
        stability_score_thresh=0.95,
        box_nms_thresh=0.7,
        crop_n_layers=0,
        crop_nms_thresh=0.7,
        crop_n_points_downscale_factor=1,
        min_mask_region_area=0,
        max_mask_fraction=1.0,
    ),
    # Stage 3 of the data engine, as SA-1B was made (paper section 4, Appendix B).
    "sa1b": dict(
        points_per_side=32,
        pred_iou_thresh=0.88,
        stability_score_thresh=0.95,
        box_nms_thresh=0.7,
        crop_n_layers=2,
        crop_nms_thresh=0.7,
        crop_n_points_downscale_factor=2,
        min_mask_region_area=100,
        max_mask_fraction=0.95,
    ),
}
SETTING_KEYS = tuple(PRESETS["default"])


def settings_for(preset: str, **overrides: Any) -> dict[str, Any]:
    """The generation settings of ``preset`` with the non-None ``overrides`` applied."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    unknown = set(overrides) - set(SETTING_KEYS)
    if unknown:
        raise ValueError(f"unknown generation settings {sorted(unknown)}")
    return dict(PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None})


# ----------------------------------------------------------------------------- inputs


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """One input image: a file (``offset`` None) or ``size`` bytes at ``offset`` of a tar."""

    key: str
    path: str
    offset: int | None = None
    size: int = 0

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            if self.offset is None:
                return f.read()
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise OSError(f"{self.key}: tar member cut short ({len(data)} of {self.size} bytes)")
        return data


def _natural(text: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def list_inputs(paths: Sequence[str | os.PathLike]) -> list[ImageSource]:
    """The images of ``paths`` (folders, image files, ``.tar`` shards) in the fixed order
    that ids and work units follow. Raises ``ValueError`` naming a missing path or a
    path that holds no image."""
    out: list[ImageSource] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(
                (f for f in p.rglob("*") if f.is_file() and _is_image(f.name)), key=lambda f: _natural(str(f))
            )
            found = [ImageSource(str(f), str(f)) for f in files]
        elif p.is_file() and p.suffix.lower() == ".tar":
            try:
                with tarfile.open(p, "r:") as tar:
                    found = [
                        ImageSource(f"{p}:{m.name}", str(p), m.offset_data, m.size)
                        for m in tar
                        if m.isfile() and _is_image(m.name)
                    ]
            except (tarfile.TarError, OSError) as e:
                raise ValueError(f"cannot read tar shard {p}: {e}") from None
        elif p.is_file() and _is_image(p.name):
            found = [ImageSource(str(p), str(p))]
        elif p.exists():
            raise ValueError(f"{p} is neither a folder, an image ({', '.join(IMAGE_SUFFIXES)}) nor a .tar")
        else:
            raise ValueError(f"input {p} does not exist")
        if not found:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {p}")
        out.extend(found)
    return out


def fingerprint(sources: Sequence[ImageSource]) -> str:
    """A hash of the input list (keys and sizes), to refuse resuming over other inputs."""
    h = hashlib.sha256()
    for s in sources:
        h.update(f"{s.key}\0{s.size}\n".encode())
    return h.hexdigest()[:32]


def unit_name(k: int) -> str:
    return f"sa_{k:06d}"


def units_of_process(num_units: int, process_index: int, process_count: int) -> list[int]:
    """The work units of one process: ``process_index, process_index + process_count, ...``."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process index {process_index} not in [0, {process_count})")
    return list(range(process_index, num_units, process_count))


# ----------------------------------------------------------------------------- generation


def make_generator(model, settings: dict[str, Any], points_per_batch: int | None = None):
    """The :class:`SamAutomaticMaskGenerator` of ``settings`` (``coco_rle`` output)."""
    import jax

    from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator

    if points_per_batch is None:
        points_per_batch = 64 if jax.default_backend() == "cpu" else 256
    kw = {k: v for k, v in settings.items() if k != "max_mask_fraction"}
    return SamAutomaticMaskGenerator(model, points_per_batch=points_per_batch, output_mode="coco_rle", **kw)


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def generate_batch(
    generator, images: Sequence[np.ndarray], max_mask_fraction: float = 1.0
) -> list[list[dict]]:
    """Mask records (``coco_rle``) of several images, their crops embedded together.

    Masks covering more than ``max_mask_fraction`` of their image are dropped."""
    from sam_jax.amg import generate_crop_boxes

    crops, firsts = [], []
    for im in images:
        boxes, _ = generate_crop_boxes(im.shape[:2], generator.crop_n_layers, generator.crop_overlap_ratio)
        firsts.append(len(crops))
        crops.extend(im[y0:y1, x0:x1] for x0, y0, x1, y1 in boxes)
    generator.predictor.set_images(crops)
    try:
        out = []
        for im, first in zip(images, firsts):
            records = generator.generate(im, embedded_at=first)
            limit = max_mask_fraction * im.shape[0] * im.shape[1]
            out.append([r for r in records if r["area"] <= limit])
        return out
    finally:
        generator.predictor.reset_image()


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(payload), 0, 0o644
    tar.addfile(info, io.BytesIO(payload))


class ShardWriter:
    """Generation of the work units of one process into ``out`` (see the module doc)."""

    def __init__(
        self,
        generator,
        sources: Sequence[ImageSource],
        out: str | os.PathLike,
        settings: dict[str, Any],
        images_per_shard: int = 1000,
        embed_batch: int = 8,
        id_offset: int = 0,
        process_index: int = 0,
        process_count: int = 1,
    ) -> None:
        if images_per_shard < 1 or embed_batch < 1 or id_offset < 0:
            raise ValueError("images_per_shard and embed_batch must be >= 1 and id_offset >= 0")
        self.generator, self.sources, self.out = generator, list(sources), Path(out)
        self.settings, self.images_per_shard, self.embed_batch = settings, images_per_shard, embed_batch
        self.id_offset, self.process_index, self.process_count = id_offset, process_index, process_count
        self.num_units = math.ceil(len(self.sources) / images_per_shard)
        self.units = units_of_process(self.num_units, process_index, process_count)

    # -- bookkeeping

    def run_record(self) -> dict[str, Any]:
        return {
            "inputs": len(self.sources),
            "fingerprint": fingerprint(self.sources),
            "images_per_shard": self.images_per_shard,
            "id_offset": self.id_offset,
            "settings": self.settings,
        }

    def check_run(self) -> None:
        """Write ``run.json``, or refuse to resume a run made with other inputs or settings."""
        path, mine = self.out / "run.json", self.run_record()
        if path.exists():
            theirs = json.loads(path.read_text())
            diff = sorted(k for k in mine if theirs.get(k) != json.loads(json.dumps(mine[k])))
            if diff:
                raise ValueError(
                    f"{self.out} holds a run with other {', '.join(diff)}; use another --out folder"
                )
        else:
            write_json(path, mine, indent=1)

    def manifest_path(self, k: int) -> Path:
        return self.out / "manifest" / f"{unit_name(k)}.json"

    def unit_indices(self, k: int) -> range:
        return range(k * self.images_per_shard, min(len(self.sources), (k + 1) * self.images_per_shard))

    # -- work

    def run(self, progress: bool = True) -> dict[str, Any]:
        """Generate every unit of this process not done yet; the run's stats."""
        from tqdm import tqdm

        self.check_run()
        t0, c0 = time.time(), time.process_time()
        todo_units = [k for k in self.units if not self.manifest_path(k).exists()]
        pending = {k: self._pending(k) for k in todo_units}
        total = sum(len(v) for v in pending.values())
        stats = dict(images=0, masks=0, empty=0, failed=0)
        bar = tqdm(total=total, unit="img", desc=f"generate p{self.process_index}", disable=not progress)
        for k in todo_units:
            work = self.out / ".work" / unit_name(k)
            todo = pending[k]
            for start in range(0, len(todo), self.embed_batch):
                chunk = todo[start : start + self.embed_batch]
                for n in self._generate_chunk(chunk, work).values():
                    stats["images"] += 1
                    stats["failed"] += n < 0
                    stats["empty"] += n == 0
                    stats["masks"] += max(n, 0)
                bar.update(len(chunk))
                bar.set_postfix(masks_per_image=f"{stats['masks'] / max(stats['images'], 1):.1f}")
            self._finish_unit(k, work)
        bar.close()
        wall, cpu = time.time() - t0, time.process_time() - c0
        stats.update(
            process_index=self.process_index,
            process_count=self.process_count,
            units_done_now=len(todo_units),
            units_of_process=len(self.units),
            masks_per_image=stats["masks"] / max(stats["images"] - stats["failed"], 1),
            wall_seconds=round(wall, 3),
            cpu_seconds=round(cpu, 3),
            images_per_second=stats["images"] / wall if wall > 0 else 0.0,
            settings=self.settings,
        )
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(t0))
        write_json(self.out / "stats" / f"run_{stamp}_p{self.process_index:05d}.json", stats, indent=1)
        return stats

    def _pending(self, k: int) -> list[int]:
        work = self.out / ".work" / unit_name(k)
        done = {p.name.split(".")[0] for p in work.glob("sa_*.json")} if work.is_dir() else set()
        return [i for i in self.unit_indices(k) if f"sa_{self.id_offset + i}" not in done]

    def _generate_chunk(self, indices: list[int], work: Path) -> dict[int, int]:
        """Generate and record images ``indices``; ``{index: masks}`` (-1: failed)."""
        from sam_jax.sa1b_json import sa1b_record

        images, ok, result = [], [], {}
        for i in indices:
            try:
                images.append(_decode(self.sources[i].read()))
                ok.append(i)
            except Exception as e:  # noqa: BLE001 - a bad image is recorded, not fatal
                write_json(
                    work / f"sa_{self.id_offset + i}.failed.json", {"error": f"{type(e).__name__}: {e}"}
                )
                result[i] = -1
        if images:
            records = generate_batch(self.generator, images, self.settings["max_mask_fraction"])
            for i, im, recs in zip(ok, images, records):
                image_id = self.id_offset + i
                doc = sa1b_record(recs, f"sa_{image_id}.jpg", image_id, im.shape)
                write_json(work / f"sa_{image_id}.json", doc)
                result[i] = len(recs)
        return result

    def _finish_unit(self, k: int, work: Path) -> None:
        """Write unit ``k``'s tar (atomically), then its manifest, then drop its work folder."""
        images, empty, failed = [], [], []
        with atomic_open(self.out / f"{unit_name(k)}.tar", "wb") as f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
                for i in self.unit_indices(k):
                    stem, src = f"sa_{self.id_offset + i}", self.sources[i]
                    if (work / f"{stem}.failed.json").exists():
                        err = json.loads((work / f"{stem}.failed.json").read_text())["error"]
                        failed.append({"id": self.id_offset + i, "source": src.key, "error": err})
                        continue
                    payload = (work / f"{stem}.json").read_bytes()
                    n = len(json.loads(payload)["annotations"])
                    if n == 0:
                        empty.append({"id": self.id_offset + i, "source": src.key})
                        continue
                    _add_member(tar, f"{stem}.jpg", src.read())
                    _add_member(tar, f"{stem}.json", payload)
                    images.append({"id": self.id_offset + i, "source": src.key, "masks": n})
        manifest = {
            "shard": f"{unit_name(k)}.tar",
            "process_index": self.process_index,
            "images": images,
            "empty": empty,
            "failed": failed,
            "masks": sum(r["masks"] for r in images),
        }
        write_json(self.manifest_path(k), manifest, indent=1)
        shutil.rmtree(work, ignore_errors=True)


def read_manifests(out: str | os.PathLike) -> list[dict[str, Any]]:
    """The manifests of the done units of a generation folder, in unit order."""
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("manifest/sa_*.json"))]


# ----------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``sam-jax generate-shards`` arguments (the model's are the CLI's own)."""
    p.add_argument("inputs", nargs="+", help="image folders, image files and/or image-only .tar shards")
    p.add_argument("--out", type=Path, required=True, help="output folder of sa_XXXXXX.tar shards")
    p.add_argument("--preset", default="default", choices=sorted(PRESETS), help="settings (default: default)")
    p.add_argument(
        "--images-per-shard", type=int, default=1000, help="images per output shard (default 1000)"
    )
    p.add_argument("--embed-batch", type=int, default=8, help="images whose crops are embedded together")
    p.add_argument("--points-per-batch", type=int, default=None, help="grid points per decoder call")
    p.add_argument("--id-offset", type=int, default=0, help="id of the first input image (default 0)")
    for key in SETTING_KEYS:
        kind = float if isinstance(PRESETS["default"][key], float) else int
        p.add_argument(
            "--" + key.replace("_", "-"), type=kind, default=None, help="override the preset's value"
        )
    p.add_argument("--coordinator-address", default=None, help="multi-host: HOST:PORT of process 0")
    p.add_argument("--num-processes", type=int, default=None, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, default=None, help="multi-host: this process's index")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def main(args: argparse.Namespace, load_model: Callable[[argparse.Namespace], Any]) -> None:
    """``sam-jax generate-shards``: bad input is a one-line error before the model is built."""
    try:
        settings = settings_for(args.preset, **{k: getattr(args, k) for k in SETTING_KEYS})
        sources = list_inputs(args.inputs)
        for name in ("images_per_shard", "embed_batch"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
        if args.out.exists() and not args.out.is_dir():
            raise ValueError(f"--out {args.out} exists and is not a folder")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    import jax

    from sam_jax.distributed import initialize_distributed

    initialize_distributed(
        {
            "coordinator_address": args.coordinator_address,
            "num_processes": args.num_processes,
            "process_id": args.process_id,
        }
    )
    model = load_model(args)
    writer = ShardWriter(
        make_generator(model, settings, args.points_per_batch),
        sources,
        args.out,
        settings,
        images_per_shard=args.images_per_shard,
        embed_batch=args.embed_batch,
        id_offset=args.id_offset,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    try:
        stats = writer.run(progress=not args.no_progress)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps({k: stats[k] for k in ("images", "masks", "empty", "failed", "images_per_second")}))
    if stats["failed"]:
        print(f"{stats['failed']} images could not be decoded (see {args.out}/manifest)", file=sys.stderr)


__all__ = [
    "PRESETS",
    "ImageSource",
    "ShardWriter",
    "generate_batch",
    "list_inputs",
    "make_generator",
    "read_manifests",
    "settings_for",
    "units_of_process",
]
