"""Throughput / memory check of the train step on one accelerator (no tensorflow).

For each variant (``vit_b``, ``vit_h``; bfloat16 compute, encoder remat ``full``,
decoder passes recomputed in the backward pass (``sim.remat``; ``--no-sim-remat``
keeps them), 64 masks x 11 passes per image, in-memory synthetic batches) the
per-device batch is doubled until the step no longer compiles or runs (out of
memory), then the largest that fits is reported. One JSON line per tried batch::

    {"variant", "batch", "sim_remat", "ok", "images_per_s", "step_s", "peak_gib",
     "tflops_per_step", "mfu", "error"}

MFU = (FLOPs of the compiled step from ``cost_analysis()``) / step time / peak
FLOP/s (``--peak-tflops``, default 989 = H100/H200 dense bf16 on the spec sheet;
the anchors measured 793 through JAX). The compiled step's FLOPs include the
recomputation that remat adds, so this is hardware-FLOP utilisation.

    python -m benchmarks.gpu_check                     # vit_b and vit_h on the device
    python -m benchmarks.gpu_check --tiny              # the tiny config on CPU (smoke test)
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def train_config(variant: str, tiny: bool, masks: int, passes: int, sim_remat: bool = True):
    """The config the check trains: the paper recipe in bfloat16 with full remat (or tiny)."""
    if tiny:
        from configs.tiny import get_config

        c = get_config()
    else:
        from configs.base import paper_variant

        c = paper_variant(variant, lr=8e-4, layer_decay=0.8, drop_path=0.4, num_steps=90000, batch=1)
        c.model.compute_dtype = "bfloat16"
        c.model.remat_policy = "full"
        c.sim.unroll = 1
    c.data.masks_per_image = masks
    c.sim.remat = sim_remat
    c.sim.num_passes, c.sim.num_correction_points = passes, max(0, passes - 3)
    c.mesh.shape = {"data": 1, "fsdp": 1, "tensor": 1}
    return c


def measure(config, batch: int, steps: int, peak_tflops: float) -> dict:
    import jax

    from data.synthetic_batch import make_batch
    from train.sharding import make_mesh
    from train.train_step import Trainer

    trainer = Trainer(config, make_mesh(dict(config.mesh.shape), jax.devices()[:1]))
    size = trainer.module.config.image_size
    host = make_batch(0, batch, config.data.masks_per_image, size)
    state = trainer.init_state(0)
    gbatch = trainer.to_global(host)
    compiled = trainer.lower(state, gbatch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float((cost or {}).get("flops", 0.0))
    state, m = trainer.step(state, gbatch)  # warm-up
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = trainer.step(state, gbatch)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t) / steps
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use", 0) / 2**30
    return dict(
        ok=True,
        images_per_s=batch / dt,
        step_s=dt,
        peak_gib=round(peak, 3),
        tflops_per_step=flops / 1e12,
        mfu=(flops / dt) / (peak_tflops * 1e12) if flops else None,
        loss=float(m["loss"]),
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="the tiny config (CPU smoke test)")
    p.add_argument("--variants", default="vit_b,vit_h")
    p.add_argument("--masks", type=int, default=64)
    p.add_argument("--passes", type=int, default=11)
    p.add_argument("--start-batch", type=int, default=1)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument(
        "--no-sim-remat",
        dest="sim_remat",
        action="store_false",
        help="keep the decoder passes' activations instead of recomputing them",
    )
    a = p.parse_args(argv)
    import jax

    variants = ["tiny"] if a.tiny else a.variants.split(",")
    print(json.dumps(dict(device=str(jax.devices()[0]), backend=jax.default_backend())), flush=True)
    for variant in variants:
        config = train_config(variant, a.tiny, a.masks, a.passes, a.sim_remat)
        best, batch = None, a.start_batch
        while batch <= a.max_batch:
            try:
                res = measure(config, batch, a.steps, a.peak_tflops)
            except Exception as e:  # noqa: BLE001 - OOM shows up as various XLA errors
                res = dict(ok=False, error=f"{type(e).__name__}: {str(e)[:300]}")
            print(json.dumps(dict(variant=variant, batch=batch, sim_remat=a.sim_remat, **res)), flush=True)
            if not res["ok"]:
                break
            best, batch = dict(res, batch=batch), batch * 2
        print(json.dumps(dict(variant=variant, largest_batch=best and best["batch"], best=best)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
