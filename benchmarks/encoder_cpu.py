"""CPU timing of one image embedding: sam-jax vs the official PyTorch release.

Both run the same random vit_b weights (written by torch, read by our loader)
on one 1024x1024 image in float32. Prints one JSON line per implementation and
one with the ratio. Usage: ``python benchmarks/encoder_cpu.py [--variant vit_b]
[--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from reference_sam import official_and_ours, torch  # needs the test extras
    from sam_jax.modeling.variants import VARIANTS

    with tempfile.TemporaryDirectory() as tmp:
        import pathlib

        sam, ours = official_and_ours(VARIANTS[args.variant], pathlib.Path(tmp))
    pixels = np.random.default_rng(0).normal(size=(1, 1024, 1024, 3)).astype(np.float32)
    x_jax = jnp.asarray(pixels)
    x_torch = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()

    t0 = time.perf_counter()
    ours.embed_images(x_jax).block_until_ready()
    compile_s = time.perf_counter() - t0
    ours_s = best_of(lambda: ours.embed_images(x_jax).block_until_ready(), args.repeats)
    with torch.no_grad():
        sam.image_encoder(x_torch)  # warm-up
        ref_s = best_of(lambda: sam.image_encoder(x_torch), args.repeats)

    common = dict(variant=args.variant, dtype="float32", image=1024, cores=os.cpu_count(),
                  cpu=platform.processor() or platform.machine(), jax=jax.__version__,
                  torch=torch.__version__, torch_threads=torch.get_num_threads())
    print(json.dumps(dict(impl="sam-jax", seconds=round(ours_s, 3),
                          first_call_seconds=round(compile_s, 3), **common)))
    print(json.dumps(dict(impl="official-pytorch", seconds=round(ref_s, 3), **common)))
    print(json.dumps(dict(figure="encoder_cpu_ratio_ours_over_official",
                          ratio=round(ours_s / ref_s, 3), **common)))


if __name__ == "__main__":
    main()
