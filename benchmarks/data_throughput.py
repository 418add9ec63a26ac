"""Throughput of the SA-1B input pipeline on SA-1B-sized synthetic shards.

Writes (or reuses) synthetic shards of 1500x2250 images with ~100 masks each,
runs ``data.pipeline.Pipeline`` (K=64, model size 1024, targets 256) and prints
one JSON line: images/s, images/s per core used, cores, plus a per-stage
profile of the per-sample transform measured single-threaded.

    python -m benchmarks.data_throughput [--images 24] [--batches 6] [--dir /tmp/sa1b_bench]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time


def _profile(shard: str, n: int) -> dict:
    """Single-thread time per stage (ms/image) of the transform."""
    import io

    import numpy as np
    from PIL import Image

    from data import rle, sa1b
    from data.preprocess import PreprocessConfig, process_record
    from sam_jax.geometry import resized_shape

    cfg = PreprocessConfig()
    loader = sa1b.Loader()
    refs = [r for r in sa1b.iter_refs(shard)][:n]
    t = dict.fromkeys(
        ("read", "json", "jpeg_decode_resize", "rle_runs_all", "targets_boxes_points", "total_transform"), 0.0
    )
    for r in refs:
        t0 = time.perf_counter()
        jpg, payload = loader.load(r)
        t1 = time.perf_counter()
        ann = sa1b.parse_payload(payload, r.payload_kind)
        t2 = time.perf_counter()
        im = Image.open(io.BytesIO(jpg))
        nh, nw = resized_shape(im.size[1], im.size[0], 1024)
        im.draft("RGB", (nw, nh))
        np.asarray(im.convert("RGB").resize((nw, nh), Image.BILINEAR))
        t3 = time.perf_counter()
        cnts = [rle.decode_counts(c, ann.height, ann.width) for c in ann.counts]
        t4 = time.perf_counter()
        runs = [rle.fg_runs(c) for c in cnts[:64]]
        rows = np.minimum(((np.arange(256) + 0.5) * 4 * ann.height / nh).astype(int), ann.height - 1)
        cols = np.minimum(((np.arange(256) + 0.5) * 4 * ann.width / nw).astype(int), ann.width - 1)
        rle.sample_grid(runs, ann.height, rows[: (nh + 3) // 4], cols[: (nw + 3) // 4])
        t5 = time.perf_counter()
        process_record(jpg, payload, r.payload_kind, 0, 0, cfg)
        t6 = time.perf_counter()
        for k, dt in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            t[k] += dt
    return {k: round(1000 * v / len(refs), 1) for k, v in t.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dir", default="/tmp/sa1b_bench")
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--parallel", type=int, default=None, help="map parallelism (default AUTOTUNE)")
    a = p.parse_args()

    from data.synthetic import write_shards

    if len(glob.glob(os.path.join(a.dir, "sa_*.tar"))) == 0:
        write_shards(a.dir, a.images, images_per_shard=8, seed=0, short_side=1500, aspect=1.5)
    shards = sorted(glob.glob(os.path.join(a.dir, "sa_*.tar")))

    from data.pipeline import Pipeline

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    pipe = Pipeline(
        shards,
        batch_size=a.batch_size,
        seed=0,
        model_size=1024,
        target_size=256,
        max_masks=64,
        process_index=0,
        process_count=1,
        num_parallel_calls=a.parallel,
    )
    it = iter(pipe)
    next(it)  # warm-up (TF init, first decode)
    c0, t0 = time.process_time(), time.perf_counter()
    for _ in range(a.batches):
        b = next(it)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    n = a.batches * a.batch_size
    ips = n / wall
    cores_used = cpu / wall
    masks = int(b["mask_valid"].sum(1).mean())
    print(
        json.dumps(
            {
                "images_per_s": round(ips, 2),
                "images_per_s_per_core": round(n / cpu, 2),
                "cores": cores,
                "cores_used": round(cores_used, 2),
                "image": "1500x2250",
                "K": 64,
                "model_size": 1024,
                "target": 256,
                "masks_per_batch_image": masks,
                "profile_ms_per_image_single_thread": _profile(shards[0], 4),
                "stats": pipe.stats(),
            }
        )
    )


if __name__ == "__main__":
    main()
