"""Cost of CLIP-prompted training: on device (crop + CLIP in the train step) against
precomputed embeddings stored beside the shards.

Measures on this machine, tiny config (128 px SAM, a tiny random CLIP, 8 images x 8
masks, every qualifying mask text-prompted, decoder passes not unrolled), median of
``--steps`` steps after compilation:

* ``step_ms_off``: the train step without text prompts;
* ``step_ms_on_device``: with the crop recipe and CLIP inside the step;
* ``clip_ms``: the crop + CLIP part alone (jitted on the same batch), i.e. what a
  precomputing pass would move out of the step (a precomputed step costs about
  ``step_ms_off`` plus reading ``bytes_per_mask``);

and prints the storage a precomputed ViT-L/14@336px pass over SA-1B would need.
One JSON line.  ``python benchmarks/text_prompt_cost.py [--steps 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY_CLIP = {
    "embed_dim": 32,
    "image_size": 32,
    "patch_size": 8,
    "vision_width": 32,
    "vision_layers": 2,
    "vision_heads": 2,
    "text_width": 32,
    "text_layers": 1,
    "text_heads": 2,
}
SA1B_MASKS = 1.1e9


def _median_ms(fn, steps):
    import numpy as np

    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def _measure(on: bool, steps: int) -> dict:
    import jax

    from configs.tiny import get_config
    from train import sharding
    from train.synthetic_batch import make_batch
    from train.text_prompt import clip_image_prompts
    from train.train_step import Trainer

    c = get_config()
    c.text.enabled, c.text.clip, c.text.clip_custom = on, "custom", TINY_CLIP
    c.text.min_mask_side = 12.5  # 100 px at 1024, scaled to 128
    c.sim.unroll = 1  # short compiles; the same for both figures
    trainer = Trainer(c, sharding.make_mesh(dict(c.mesh.shape)))
    state = [trainer.init_state(0)]
    size = trainer.module.config.image_size
    host = make_batch(0, c.data.global_batch_size, c.data.masks_per_image, size)
    batch = trainer.to_global(host)

    def step():
        state[0], metrics = trainer.step(state[0], batch)
        return jax.block_until_ready(metrics)

    metrics = step()  # compile
    if not on:
        return {"step_ms_off": _median_ms(step, steps)}
    out = {
        "step_ms_on_device": _median_ms(step, steps),
        "text_prompted_masks": float(metrics["text_prompted"]),
    }
    fn = jax.jit(clip_image_prompts, static_argnums=(0, 7, 8))
    args = (
        trainer.clip,
        trainer.clip_params,
        jax.random.key(0),
        host["image"],
        host["masks"],
        host["boxes"],
        host["mask_valid"],
        trainer.text_cfg,
        size,
    )
    jax.block_until_ready(fn(*args))
    out["clip_ms"] = _median_ms(lambda: jax.block_until_ready(fn(*args)), steps)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args(argv)

    import jax

    from sam_jax.clip.model import CLIP_CONFIGS

    out = {"device": jax.devices()[0].platform}
    out.update(_measure(False, args.steps))
    out.update(_measure(True, args.steps))
    out["added_ms_per_step"] = out["step_ms_on_device"] - out["step_ms_off"]
    d = CLIP_CONFIGS["ViT-L/14@336px"].embed_dim
    out["bytes_per_mask_fp16"] = 2 * d
    out["sa1b_precomputed_tb_fp16"] = SA1B_MASKS * 2 * d / 1e12
    print(json.dumps(out))


if __name__ == "__main__":
    main()
