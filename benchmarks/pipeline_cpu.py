"""``python -m benchmarks.run pipeline-cpu``: throughput of the SA-1B input pipeline on the CPU.

Writes SA-1B-sized synthetic shards (``data.synthetic``: 1500x2250 images with
about 100 masks each, 3 shards of 8) to a temporary folder, runs
``data.pipeline.Pipeline`` as training does (K = 64 masks, model size 1024,
256x256 targets, batch 4, AUTOTUNE parallelism) and emits two JSON lines:

* ``what="throughput"``: images per CPU-second of the whole process (user +
  system time of every thread: the honest figure on a shared machine) and
  images per wall-second, over ``12`` batches after two warm-up batches;
* ``what="profile"``: the CPU milliseconds per image of each stage of the
  per-sample transform (``data.preprocess``), single-threaded, so that the
  limiting stage is visible (JPEG decode, resize, normalise, RLE decode, targets).

``--tiny`` runs the same on 96 px images, a 64 px model and two batches (a smoke run).
"""

from __future__ import annotations

import io
import os
import resource
import tempfile
import time

import numpy as np

FULL = dict(short_side=1500, model_size=1024, target=256, masks=64, batches=12, images=24)
TINY = dict(short_side=96, model_size=64, target=16, masks=8, batches=2, images=6)
BATCH = 4


def _cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _throughput(shards: list[str], p: dict) -> dict:
    from data.pipeline import Pipeline

    pipe = Pipeline(
        shards,
        batch_size=BATCH,
        seed=0,
        model_size=p["model_size"],
        target_size=p["target"],
        max_masks=p["masks"],
        process_index=0,
        process_count=1,
    )
    it = iter(pipe)
    try:
        for _ in range(2):  # warm-up: TF start, first decodes, thread pools
            next(it)
        (u0, s0), t0 = _cpu(), time.perf_counter()
        for _ in range(p["batches"]):
            batch = next(it)
        wall = time.perf_counter() - t0
        (u1, s1) = _cpu()
    finally:
        it.close()
    n, cpu = p["batches"] * BATCH, (u1 - u0) + (s1 - s0)
    return dict(
        images=n,
        images_per_cpu_second=round(n / cpu, 2),
        images_per_second=round(n / wall, 2),
        cores_used=round(cpu / wall, 2),
        cpu_ms_per_image=round(1e3 * cpu / n, 1),
        system_ms_per_image=round(1e3 * (s1 - s0) / n, 1),
        masks_per_image=round(float(batch["mask_valid"].sum(1).mean()), 1),
        statuses=pipe.stats(),
    )


def _profile(shards: list[str], p: dict) -> dict:
    """Single-thread CPU ms per image of each stage of ``data.preprocess.process_record``."""
    from PIL import Image

    from data import rle, sa1b
    from data.preprocess import PreprocessConfig, _target_axis, process_record
    from sam_jax.geometry import normalize, resized_shape

    cfg = PreprocessConfig(model_size=p["model_size"], target_size=p["target"], max_masks=p["masks"])
    S, R, K = cfg.model_size, cfg.target, cfg.max_masks
    loader = sa1b.Loader()
    records = [loader.load(r) + (r.payload_kind,) for s in shards for r in sa1b.iter_refs(s)]
    loader.close()
    process_record(*records[0], 0, 0, cfg)  # warm-up
    stages = (
        "read_json",
        "jpeg_decode",
        "resize",
        "normalize_pad",
        "rle_decode_area",
        "boxes_points",
        "grid",
    )
    ms = dict.fromkeys(stages + ("process_record",), 0.0)
    masks = 0
    for jpeg, payload, kind in records:
        t = [time.thread_time()]
        ann = sa1b.parse_payload(payload, kind)
        t.append(time.thread_time())
        im = Image.open(io.BytesIO(jpeg))
        H, W = ann.height, ann.width
        nh, nw = resized_shape(H, W, S)
        im.draft("RGB", (nw, nh))
        im = im.convert("RGB")
        t.append(time.thread_time())
        img = np.asarray(im.resize((nw, nh), Image.BILINEAR) if im.size != (nw, nh) else im)
        t.append(time.thread_time())
        normalize(img, out=np.zeros((S, S, 3), np.float32)[:nh, :nw])
        t.append(time.thread_time())
        cnt, offsets = rle.decode_counts_many(ann.counts, H, W)
        areas = rle.areas(cnt, offsets)
        chosen = np.flatnonzero((areas > 0) & (areas <= cfg.max_area_frac * H * W))[:K]
        t.append(time.thread_time())
        runs = [rle.fg_runs(cnt[offsets[i] : offsets[i + 1]]) for i in chosen]
        rle.bboxes_xyxy(runs, H)
        rle.sample_points(runs, H, np.random.default_rng(0))
        t.append(time.thread_time())
        rle.sample_grid(runs, H, _target_axis(R, S, nh, H), _target_axis(R, S, nw, W))
        t.append(time.thread_time())
        process_record(jpeg, payload, kind, 0, 0, cfg)
        t.append(time.thread_time())
        for name, a, b in zip(ms, t[:-1], t[1:]):
            ms[name] += 1e3 * (b - a)
        masks += len(ann.counts)
    n = len(records)
    out = {k: round(v / n, 2) for k, v in ms.items()}
    out["stages_sum"] = round(sum(out[k] for k in stages), 2)
    out["masks_per_image_in_shards"] = round(masks / n, 1)
    return out


def bench_pipeline_cpu(args, official, base: dict) -> None:
    from data.synthetic import write_shards

    p = TINY if args.tiny else FULL
    common = dict(
        **base,
        bench="pipeline_cpu",
        impl="sam-jax",
        image=f"{p['short_side']}x{p['short_side'] * 3 // 2}",
        K=p["masks"],
        model_size=p["model_size"],
        target=p["target"],
        batch=BATCH,
        cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
    )
    with tempfile.TemporaryDirectory(prefix="sam-jax-pipeline-") as tmp:
        shards = write_shards(
            tmp,
            p["images"],
            images_per_shard=p["images"] // 3,
            seed=0,
            short_side=p["short_side"],
            aspect=1.5,
        )
        from benchmarks.run import emit

        emit(**common, what="profile", cpu_ms_per_image_single_thread=_profile(shards, p))
        emit(**common, what="throughput", **_throughput(shards, p))
