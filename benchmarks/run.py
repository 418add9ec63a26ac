"""The sam-jax benchmark suite: one entry point, one JSON line per figure.

Figures (``--parts``):

* ``encoder``: image encoder ms/image and TFLOP/s for each variant, batch,
  dtype and attention implementation; FLOPs counted analytically with the
  padded windows included (the anchors' convention, ``encoder_flops``).
* ``decoder``: prompt encoder + mask decoder, ms per call for 1 and 64 point
  prompts on one image embedding (multimask).
* ``amg``: ``SamAutomaticMaskGenerator.generate`` ms/image at default settings on
  a 512x512 photo (a synthetic one when scikit-image is missing).
* ``train``: the training step (64 masks x 11 passes per image by default):
  images/s, step ms, MFU (FLOPs from the compiled step's cost analysis), peak
  device memory.

When the official ``segment-anything`` package and torch are importable
(``--official``, on by default where possible), the same encoder / decoder /
AMG figures are measured for it in the same run and a ``ratio`` line gives
ours / theirs. ``--tiny`` runs everything on tiny configs for one iteration (CI
checks that every figure is produced; values are not checked).

Usage::

    python benchmarks/run.py                       # full suite on the default device
    python benchmarks/run.py --parts encoder --variants vit_h --batches 8 --dtypes bfloat16
    python benchmarks/run.py --tiny --iters 1      # CPU smoke run
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time
from typing import Any, Callable

# Leave device memory to torch when both run in one process (official figures).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from sam_jax.modeling.sam import SamConfig  # noqa: E402
from sam_jax.modeling.variants import VARIANTS  # noqa: E402
from sam_jax.sam_model import build_sam  # noqa: E402

TINY = SamConfig(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2,
                 encoder_global_attn_indexes=(1,), image_size=128, prompt_embed_dim=64,
                 decoder_mlp_dim=128)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def encoder_flops(c: SamConfig) -> float:
    """Analytic FLOPs of one image through the image encoder (padded windows counted)."""
    d, g, ws = c.encoder_embed_dim, c.embedding_size, c.window_size
    t = g * g
    nw = math.ceil(g / ws) ** 2
    n = ws * ws
    tp = nw * n
    n_global = len(tuple(c.encoder_global_attn_indexes))
    n_window = c.encoder_depth - n_global
    f = 2 * 3 * c.patch_size ** 2 * d * t
    f += n_window * (2 * 4 * d * d * tp + 2 * 8 * d * d * t + 4 * n * n * d * nw)
    f += n_global * (2 * 4 * d * d * t + 2 * 8 * d * d * t + 4 * t * t * d)
    e = c.prompt_embed_dim
    f += 2 * d * e * t + 2 * 9 * e * e * t
    return float(f)


def timed(fn: Callable[[], Any], iters: int, warmup: int = 1) -> float:
    """Seconds per call (mean over ``iters`` after ``warmup`` calls)."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    t0 = time.perf_counter()
    for _ in range(iters):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / iters


class Official:
    """The official PyTorch SAM on the best torch device, or None if unavailable."""

    @staticmethod
    def load():
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        try:
            import torch
            import segment_anything  # noqa: F401 - the reference package
            from reference_sam import official_sam  # the official model for a SamConfig (pytest)
        except ImportError:
            return None

        o = Official()
        o.torch, o.official_sam = torch, official_sam
        o.device = "cuda" if torch.cuda.is_available() else "cpu"
        return o

    def build(self, c: SamConfig):
        """The official SAM for ``c`` with random weights, on the torch device."""
        return self.official_sam(c).to(self.device).eval()

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def timed(self, fn, iters, warmup=1):
        with self.torch.no_grad():
            for _ in range(warmup):
                fn()
            self.sync()
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            self.sync()
        return (time.perf_counter() - t0) / iters

    def autocast(self, dtype: str):
        return self.torch.autocast(self.device, dtype=self.torch.bfloat16,
                                   enabled=dtype == "bfloat16")


def bench_encoder(args, official, base: dict) -> None:
    for name in args.variants:
        config = TINY if args.tiny else VARIANTS[name]
        flops = encoder_flops(config)
        s = config.image_size
        ref = official.build(config) if official else None
        for dtype in args.dtypes:
            model = build_sam(config, dtype=DTYPES[dtype])
            for batch in args.batches:
                x = jax.random.normal(jax.random.key(0), (batch, s, s, 3), jnp.float32)
                for impl in args.impls:
                    fn = jax.jit(lambda p, x, impl=impl: model.module.clone(
                        attention_impl=None if impl == "auto" else impl).apply(
                        {"params": p}, x, method="embed_images"))
                    try:
                        sec = timed(lambda: fn(model.params, x), args.iters)
                    except Exception as err:  # noqa: BLE001 - an impl may not exist here
                        emit(**base, bench="image_encoder", impl="sam-jax", variant=name,
                             dtype=dtype, batch=batch, attention=impl,
                             error=f"{type(err).__name__}: {str(err)[:300]}")
                        continue
                    ours = dict(**base, bench="image_encoder", impl="sam-jax", variant=name,
                                dtype=dtype, batch=batch, attention=impl,
                                ms_per_image=1e3 * sec / batch,
                                tflops=flops * batch / sec / 1e12, gflop_per_image=flops / 1e9)
                    emit(**ours)
                if ref is not None:
                    xt = official.torch.randn(batch, 3, s, s, device=official.device)

                    def run_ref():
                        with official.autocast(dtype):
                            ref.image_encoder(xt)

                    sec_ref = official.timed(run_ref, args.iters)
                    emit(**base, bench="image_encoder", impl="official", variant=name,
                         dtype=dtype, batch=batch, ms_per_image=1e3 * sec_ref / batch,
                         tflops=flops * batch / sec_ref / 1e12)
                    emit(**base, bench="image_encoder", figure="ratio_ours_over_official",
                         variant=name, dtype=dtype, batch=batch,
                         ratio=ours["ms_per_image"] / (1e3 * sec_ref / batch))
            del model
        del ref


def bench_decoder(args, official, base: dict) -> None:
    for name in args.variants:
        config = TINY if args.tiny else VARIANTS[name]
        g, e, s = config.embedding_size, config.prompt_embed_dim, config.image_size
        ref = official.build(config) if official else None
        for dtype in args.dtypes:
            model = build_sam(config, dtype=DTYPES[dtype])
            emb = jax.random.normal(jax.random.key(1), (1, g, g, e), DTYPES[dtype])
            for prompts in (1, 64):
                coords = jax.random.uniform(jax.random.key(2), (prompts, 1, 2)) * s
                labels = jnp.ones((prompts, 1), jnp.int32)
                sec = timed(lambda: model.decode(emb, coords, labels), args.iters * 10, warmup=2)
                emit(**base, bench="prompt+decoder", impl="sam-jax", variant=name, dtype=dtype,
                     prompts=prompts, ms_per_call=1e3 * sec)
                if ref is not None:
                    torch = official.torch
                    emb_t = torch.randn(1, e, g, g, device=official.device)
                    pts = torch.rand(prompts, 1, 2, device=official.device) * s
                    lab = torch.ones(prompts, 1, device=official.device, dtype=torch.int)

                    def run_ref():
                        with official.autocast(dtype):
                            sp, de = ref.prompt_encoder(points=(pts, lab), boxes=None, masks=None)
                            ref.mask_decoder(image_embeddings=emb_t,
                                             image_pe=ref.prompt_encoder.get_dense_pe(),
                                             sparse_prompt_embeddings=sp,
                                             dense_prompt_embeddings=de, multimask_output=True)

                    sec_ref = official.timed(run_ref, args.iters * 10, warmup=2)
                    emit(**base, bench="prompt+decoder", impl="official", variant=name,
                         dtype=dtype, prompts=prompts, ms_per_call=1e3 * sec_ref)
                    emit(**base, bench="prompt+decoder", figure="ratio_ours_over_official",
                         variant=name, dtype=dtype, prompts=prompts, ratio=sec / sec_ref)


def photo(size: int) -> np.ndarray:
    """A ``size x size`` RGB photo (scikit-image's astronaut, else a synthetic scene)."""
    from PIL import Image

    try:
        from skimage import data as skdata

        img = skdata.astronaut()
    except ImportError:
        from data.synthetic import generate_image

        img = generate_image(seed=0, index=0, short_side=size).image
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))


def bench_amg(args, official, base: dict) -> None:
    from sam_jax import SamAutomaticMaskGenerator

    image = photo(64 if args.tiny else 512)
    extra = dict(points_per_side=4) if args.tiny else {}
    for name in args.variants:
        config = TINY if args.tiny else VARIANTS[name]
        seconds = {}
        for dtype in args.dtypes:
            gen = SamAutomaticMaskGenerator(build_sam(config, dtype=DTYPES[dtype]), **extra)
            masks = gen.generate(image)
            seconds[dtype] = sec = timed(lambda: gen.generate(image), args.iters, warmup=0)
            emit(**base, bench="amg", impl="sam-jax", variant=name, dtype=dtype,
                 image=list(image.shape), ms_per_image=1e3 * sec, masks=len(masks))
        if official is not None and "float32" in seconds:
            from segment_anything.automatic_mask_generator import \
                SamAutomaticMaskGenerator as RefAMG

            ref = RefAMG(official.build(config), **extra)
            sec_ref = official.timed(lambda: ref.generate(image), args.iters)
            emit(**base, bench="amg", impl="official", variant=name, dtype="float32",
                 image=list(image.shape), ms_per_image=1e3 * sec_ref)
            emit(**base, bench="amg", figure="ratio_ours_over_official", variant=name,
                 dtype="float32", ratio=seconds["float32"] / sec_ref)


def bench_train(args, official, base: dict) -> None:
    from train.gpu_check import measure, train_config

    masks, passes = (4, 3) if args.tiny else (64, 11)
    for name in args.variants:
        config = train_config(name, args.tiny, masks, passes)
        for batch in args.batches:
            try:
                res = measure(config, batch, args.iters, args.peak_tflops)
            except Exception as err:  # noqa: BLE001 - out of memory shows as XLA errors
                res = dict(ok=False, error=f"{type(err).__name__}: {str(err)[:300]}")
            emit(**base, bench="train_step", impl="sam-jax", variant=name, batch=batch,
                 masks_per_image=masks, passes=passes, dtype=config.model.compute_dtype, **res)


PARTS = {"encoder": bench_encoder, "decoder": bench_decoder, "amg": bench_amg,
         "train": bench_train}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {list(PARTS)}")
    parser.add_argument("--variants", default="vit_b,vit_l,vit_h")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--impls", default="auto",
                        help="attention implementations to sweep: auto,xla,cudnn,decomposed")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16 peak of the device, for MFU (H100/H200: 989)")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke run)")
    parser.add_argument("--no-official", action="store_true", help="skip the official package")
    args = parser.parse_args(argv)
    for key in ("parts", "variants", "dtypes", "impls"):
        setattr(args, key, [v for v in getattr(args, key).split(",") if v])
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.tiny:  # every variant is the same tiny model: measure it once
        args.variants = args.variants[:1]
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {list(PARTS)}")

    official = None if args.no_official else Official.load()
    dev = jax.devices()[0]
    base = dict(device=getattr(dev, "device_kind", dev.platform), backend=jax.default_backend())
    emit(**base, bench="environment", date=datetime.date.today().isoformat(),
         jax=jax.__version__, official=official.device if official else None,
         torch=official.torch.__version__ if official else None, tiny=args.tiny)
    for part in args.parts:
        PARTS[part](args, official, base)


if __name__ == "__main__":
    main()
