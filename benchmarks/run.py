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

Two CPU comparisons with the official release on the SAME random weights (written
by torch, read by our loader; they need the ``test`` extras), run only when named:

* ``encoder-cpu``: one image embedding in float32 at batch 1, best of ``--iters``,
  plus the first (compiling) call.
* ``inference-cpu``: ``set_image``, ``predict`` with one point (median of 20 warm
  calls, ours and theirs alternating) and ``generate`` at default settings on a
  512x512 photo, each with a ratio line (wall and process CPU time).
* ``text-prompt-cpu``: the training cost of CLIP prompts (tiny SAM, tiny random CLIP,
  8 images x 8 masks): the step without and with them (crop + CLIP inside the step),
  and the crop + CLIP alone (what precomputed embeddings would move out of the step);
  median wall and process-CPU ms over ``--iters`` steps.
* ``load-cpu`` (vit_h by default): a released-format ``.pth`` (random weights) to
  usable params, ours from the ``.pth`` and from the converted ``.npz`` against the
  official builder, each in a fresh process: wall and CPU seconds, peak RSS.
* ``pipeline-cpu``: the SA-1B input pipeline, images per CPU-second and a per-stage
  profile (``benchmarks/pipeline_cpu.py``; no official counterpart).
* ``generate-shards-cpu``: ``sam-jax generate-shards`` images/s with the default and
  ``sa1b`` presets, and the projected H200 cost of 11M images
  (``benchmarks/generate_shards.py``).

When the official ``segment-anything`` package and torch are importable
(``--official``, on by default where possible), the same encoder / decoder /
AMG figures are measured for it in the same run and a ``ratio`` line gives
ours / theirs. ``--tiny`` runs everything on the tiny SAM at 128 px (``configs.tiny``) for one iteration (CI
checks that every figure is produced; values are not checked).

Usage::

    python -m benchmarks.run                       # full suite on the default device
    python -m benchmarks.run --parts encoder --variants vit_h --batches 8 --dtypes bfloat16
    python -m benchmarks.run --tiny --iters 1      # CPU smoke run
    python -m benchmarks.run encoder-cpu           # vit_b, ours vs official (= --parts encoder-cpu)
    python -m benchmarks.run inference-cpu
    python -m benchmarks.run text-prompt-cpu --iters 10
    python -m benchmarks.run load-cpu              # vit_h checkpoint load (writes 5 GB to the temp dir)
    python -m benchmarks.run pipeline-cpu
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import tempfile
import time
from collections.abc import Callable
from typing import Any

# Leave device memory to torch when both run in one process (official figures).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.pipeline_cpu import bench_pipeline_cpu  # noqa: E402
from configs.tiny import TINY_TRAIN as TINY  # noqa: E402
from sam_jax.modeling.sam import SamConfig  # noqa: E402
from sam_jax.modeling.variants import VARIANTS  # noqa: E402
from sam_jax.sam_model import build_sam  # noqa: E402

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
    f = 2 * 3 * c.patch_size**2 * d * t
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
        try:
            import torch

            from benchmarks.reference_sam import official_sam  # the official model for a SamConfig
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
        return self.torch.autocast(self.device, dtype=self.torch.bfloat16, enabled=dtype == "bfloat16")


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
                    fn = jax.jit(
                        lambda p, x, impl=impl: model.module.clone(
                            attention_impl=None if impl == "auto" else impl
                        ).apply({"params": p}, x, method="embed_images")
                    )
                    try:
                        sec = timed(lambda: fn(model.params, x), args.iters)
                    except Exception as err:  # noqa: BLE001 - an impl may not exist here
                        emit(
                            **base,
                            bench="image_encoder",
                            impl="sam-jax",
                            variant=name,
                            dtype=dtype,
                            batch=batch,
                            attention=impl,
                            error=f"{type(err).__name__}: {str(err)[:300]}",
                        )
                        continue
                    ours = dict(
                        **base,
                        bench="image_encoder",
                        impl="sam-jax",
                        variant=name,
                        dtype=dtype,
                        batch=batch,
                        attention=impl,
                        ms_per_image=1e3 * sec / batch,
                        tflops=flops * batch / sec / 1e12,
                        gflop_per_image=flops / 1e9,
                    )
                    emit(**ours)
                if ref is not None:
                    xt = official.torch.randn(batch, 3, s, s, device=official.device)

                    def run_ref():
                        with official.autocast(dtype):
                            ref.image_encoder(xt)

                    sec_ref = official.timed(run_ref, args.iters)
                    emit(
                        **base,
                        bench="image_encoder",
                        impl="official",
                        variant=name,
                        dtype=dtype,
                        batch=batch,
                        ms_per_image=1e3 * sec_ref / batch,
                        tflops=flops * batch / sec_ref / 1e12,
                    )
                    emit(
                        **base,
                        bench="image_encoder",
                        figure="ratio_ours_over_official",
                        variant=name,
                        dtype=dtype,
                        batch=batch,
                        ratio=ours["ms_per_image"] / (1e3 * sec_ref / batch),
                    )
            model = None  # free it before the next variant
        ref = None


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
                emit(
                    **base,
                    bench="prompt+decoder",
                    impl="sam-jax",
                    variant=name,
                    dtype=dtype,
                    prompts=prompts,
                    ms_per_call=1e3 * sec,
                )
                if ref is not None:
                    torch = official.torch
                    emb_t = torch.randn(1, e, g, g, device=official.device)
                    pts = torch.rand(prompts, 1, 2, device=official.device) * s
                    lab = torch.ones(prompts, 1, device=official.device, dtype=torch.int)

                    def run_ref():
                        with official.autocast(dtype):
                            sp, de = ref.prompt_encoder(points=(pts, lab), boxes=None, masks=None)
                            ref.mask_decoder(
                                image_embeddings=emb_t,
                                image_pe=ref.prompt_encoder.get_dense_pe(),
                                sparse_prompt_embeddings=sp,
                                dense_prompt_embeddings=de,
                                multimask_output=True,
                            )

                    sec_ref = official.timed(run_ref, args.iters * 10, warmup=2)
                    emit(
                        **base,
                        bench="prompt+decoder",
                        impl="official",
                        variant=name,
                        dtype=dtype,
                        prompts=prompts,
                        ms_per_call=1e3 * sec_ref,
                    )
                    emit(
                        **base,
                        bench="prompt+decoder",
                        figure="ratio_ours_over_official",
                        variant=name,
                        dtype=dtype,
                        prompts=prompts,
                        ratio=sec / sec_ref,
                    )


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
            emit(
                **base,
                bench="amg",
                impl="sam-jax",
                variant=name,
                dtype=dtype,
                image=list(image.shape),
                ms_per_image=1e3 * sec,
                masks=len(masks),
            )
        if official is not None and "float32" in seconds:
            from segment_anything.automatic_mask_generator import SamAutomaticMaskGenerator as RefAMG

            ref = RefAMG(official.build(config), **extra)
            sec_ref = official.timed(lambda: ref.generate(image), args.iters)
            emit(
                **base,
                bench="amg",
                impl="official",
                variant=name,
                dtype="float32",
                image=list(image.shape),
                ms_per_image=1e3 * sec_ref,
            )
            emit(
                **base,
                bench="amg",
                figure="ratio_ours_over_official",
                variant=name,
                dtype="float32",
                ratio=seconds["float32"] / sec_ref,
            )


def bench_train(args, official, base: dict) -> None:
    from benchmarks.gpu_check import measure, train_config

    masks, passes = (4, 3) if args.tiny else (64, 11)
    for name in args.variants:
        config = train_config(name, args.tiny, masks, passes)
        for batch in args.batches:
            try:
                res = measure(config, batch, args.iters, args.peak_tflops)
            except Exception as err:  # noqa: BLE001 - out of memory shows as XLA errors
                res = dict(ok=False, error=f"{type(err).__name__}: {str(err)[:300]}")
            emit(
                **base,
                bench="train_step",
                impl="sam-jax",
                variant=name,
                batch=batch,
                masks_per_image=masks,
                passes=passes,
                dtype=config.model.compute_dtype,
                **res,
            )


def best_of(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def same_weights(config: SamConfig, official):
    """``(official torch Sam, our SamModel)`` on the same random weights (a ``.pth``)."""
    if official is None:
        raise SystemExit("this part compares with the official package: install the test extras")
    from benchmarks.reference_sam import official_and_ours

    with tempfile.TemporaryDirectory() as tmp:
        return official_and_ours(config, pathlib.Path(tmp))


def bench_encoder_cpu(args, official, base: dict) -> None:
    torch = official.torch if official else None
    for name in args.variants:
        config = TINY if args.tiny else VARIANTS[name]
        ref, ours = same_weights(config, official)
        s = config.image_size
        pixels = np.random.default_rng(0).normal(size=(1, s, s, 3)).astype(np.float32)
        x, xt = jnp.asarray(pixels), torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
        first = best_of(lambda: ours.embed_images(x).block_until_ready(), 1)
        sec = best_of(lambda: ours.embed_images(x).block_until_ready(), args.iters)
        common = dict(
            **base, bench="encoder_cpu", variant=name, dtype="float32", image=s, cores=os.cpu_count()
        )
        emit(**common, impl="sam-jax", seconds=round(sec, 3), first_call_seconds=round(first, 3))
        with torch.no_grad():
            ref.image_encoder(xt)  # warm-up
            sec_ref = best_of(lambda: ref.image_encoder(xt), args.iters)
        emit(**common, impl="official", seconds=round(sec_ref, 3), torch_threads=torch.get_num_threads())
        emit(**common, figure="ratio_ours_over_official", ratio=round(sec / sec_ref, 3))


def wall_and_cpu(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall and process CPU seconds of one call (CPU time is steadier on a shared machine)."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def bench_inference_cpu(args, official, base: dict) -> None:
    """``set_image``, one-point ``predict`` and default ``generate``: ours, official and
    the ratio ours / official (wall time; process CPU time beside it)."""
    import segment_anything

    from sam_jax import SamAutomaticMaskGenerator, SamPredictor

    torch = official.torch if official else None
    image = photo(64 if args.tiny else 512)
    extra = dict(points_per_side=4) if args.tiny else {}
    h, w = image.shape[:2]
    point, label = np.array([[w * 0.45, h * 0.4]]), np.array([1])
    for name in args.variants:
        ref_model, ours = same_weights(TINY if args.tiny else VARIANTS[name], official)
        common = dict(**base, bench="inference_cpu", variant=name, dtype="float32")

        def report(what, t_ours, t_ref, **extra_fields):
            for impl, (sec, cpu) in (("sam-jax", t_ours), ("official", t_ref)):
                emit(**common, impl=impl, what=what, seconds=round(sec, 4), cpu_seconds=round(cpu, 4))
            emit(
                **common,
                figure="ratio_ours_over_official",
                what=what,
                ratio=round(t_ours[0] / t_ref[0], 3),
                cpu_ratio=round(t_ours[1] / t_ref[1], 3),
                **extra_fields,
            )

        pred, ref = SamPredictor(ours), segment_anything.SamPredictor(ref_model)
        with torch.no_grad():
            first = wall_and_cpu(lambda: (pred.set_image(image), pred.features.block_until_ready()))
            t_ours = wall_and_cpu(lambda: (pred.set_image(image), pred.features.block_until_ready()))
            ref.set_image(image)
            t_ref = wall_and_cpu(lambda: ref.set_image(image))
        report("set_image", t_ours, t_ref, first_call_seconds=round(first[0], 3))
        times = {"sam-jax": [], "official": []}  # alternating call by call; the first compiles
        with torch.no_grad():
            for _ in range(21):
                times["sam-jax"].append(wall_and_cpu(lambda: pred.predict(point, label)))
                times["official"].append(wall_and_cpu(lambda: ref.predict(point, label)))
        med = {k: tuple(np.median(np.array(t[1:]), axis=0)) for k, t in times.items()}
        report("predict_1_point", med["sam-jax"], med["official"], calls=20)
        gen = SamAutomaticMaskGenerator(ours, **extra)
        first = wall_and_cpu(lambda: gen.generate(image))  # compiles
        out: dict[str, Any] = {}
        t_ours = wall_and_cpu(lambda: out.update(ours=gen.generate(image)))
        ref_gen = segment_anything.SamAutomaticMaskGenerator(ref_model, **extra)
        with torch.no_grad():
            t_ref = wall_and_cpu(lambda: out.update(ref=ref_gen.generate(image)))
        report(
            "generate_default",
            t_ours,
            t_ref,
            first_call_seconds=round(first[0], 3),
            masks_ours=len(out["ours"]),
            masks_official=len(out["ref"]),
        )


def bench_text_prompt_cpu(args, official, base: dict) -> None:
    from configs.tiny import TINY_CLIP_FIELDS, get_config
    from data.synthetic_batch import make_batch
    from train.sharding import make_mesh
    from train.text_prompt import clip_image_prompts
    from train.train_step import Trainer

    def ms(fn):  # median wall and process-CPU milliseconds of warm calls
        jax.block_until_ready(fn())  # compile
        w, c = [], []
        for _ in range(max(args.iters, 1)):
            w0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn())
            w.append(time.perf_counter() - w0), c.append(time.process_time() - c0)
        return round(1e3 * float(np.median(w)), 2), round(1e3 * float(np.median(c)), 2)

    common = dict(**base, bench="text_prompt_cpu", cores=os.cpu_count())
    for on in (False, True):
        c = get_config()
        c.text.enabled, c.text.clip, c.text.clip_custom = on, "custom", TINY_CLIP_FIELDS
        c.text.min_mask_side, c.sim.unroll = 12.5, 1  # 100 px at 1024, scaled to 128
        tr = Trainer(c, make_mesh(dict(c.mesh.shape)))
        state = [tr.init_state(0)]
        host = make_batch(0, c.data.global_batch_size, c.data.masks_per_image, tr.module.config.image_size)
        batch = tr.to_global(host)

        def step():
            state[0], metrics = tr.step(state[0], batch)
            return metrics

        wall, cpu = ms(step)
        extra = dict(text_prompted=float(step()["text_prompted"])) if on else {}
        emit(**common, what="train_step", text_prompt=on, ms=wall, cpu_ms=cpu, **extra)
        if on:
            fn = jax.jit(clip_image_prompts, static_argnums=(0, 7, 8))
            keys = ("image", "masks", "boxes", "mask_valid")
            clip_args = (tr.clip, tr.clip_params, jax.random.key(0), *(host[k] for k in keys), tr.text_cfg)
            wall, cpu = ms(lambda: fn(*clip_args, tr.module.config.image_size))
            emit(**common, what="crop_and_clip", ms=wall, cpu_ms=cpu)


_LOAD = """
import json, resource, sys, time
impl, path, variant = sys.argv[1:]
t0, c0 = time.perf_counter(), time.process_time()
if impl == "official":
    import torch, segment_anything
    t1, c1 = time.perf_counter(), time.process_time()
    if variant == "tiny":  # no registry entry: the official builder's two steps
        from configs.tiny import TINY_TRAIN; from benchmarks.reference_sam import official_sam
        official_sam(TINY_TRAIN).load_state_dict(torch.load(path))
    else:
        segment_anything.sam_model_registry[variant](checkpoint=path)
else:
    import jax; from configs.tiny import TINY_TRAIN; from sam_jax.sam_model import build_sam
    t1, c1 = time.perf_counter(), time.process_time()
    jax.block_until_ready(build_sam(TINY_TRAIN if variant == "tiny" else variant, checkpoint=path).params)
t2, c2 = time.perf_counter(), time.process_time()
# VmHWM, not ru_maxrss: Linux carries the parent's RSS over the exec into ru_maxrss.
hwm = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")]
peak = int(hwm[0].split()[1]) * 1024 / 1e9 if hwm else float("nan")
faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt  # pages read from disk
out = dict(seconds=t2 - t1, cpu_seconds=c2 - c1, import_seconds=t1 - t0, peak_rss_gb=peak)
print(json.dumps(dict(out, major_faults=faults)))
"""


def bench_load_cpu(args, official, base: dict) -> None:
    """Checkpoint to usable params, each in a fresh process (peak RSS, VmHWM, is per
    process): ours from the ``.pth`` and from the converted ``.npz``, and the official
    builder. Seconds are from after the imports to params ready."""
    import gc
    import subprocess
    import sys

    from benchmarks.reference_sam import official_sam
    from sam_jax.sam_model import convert_checkpoint

    if official is None:
        raise SystemExit("load-cpu compares with the official package: install the test extras")
    torch = official.torch
    env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    for name in args.load_variants:
        config, variant = (TINY, "tiny") if args.tiny else (VARIANTS[name], name)
        with tempfile.TemporaryDirectory() as tmp:
            pth, npz = os.path.join(tmp, f"{variant}.pth"), os.path.join(tmp, f"{variant}.npz")
            torch.save(official_sam(config).state_dict(), pth)  # random weights, official keys
            gc.collect()
            convert_checkpoint(pth, npz, config)
            gc.collect()
            common = dict(
                **base, bench="load_cpu", variant=variant, file_gb=round(os.path.getsize(pth) / 1e9, 3)
            )
            got = {}
            for impl, path in (("sam-jax", pth), ("sam-jax", npz), ("official", pth)):
                with open(path, "rb") as f:  # the same warm page cache for everyone
                    while f.read(1 << 24):
                        pass
                run = subprocess.run(
                    [sys.executable, "-c", _LOAD, impl, path, variant],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                if run.returncode:
                    raise SystemExit(f"load-cpu: {impl} {path} failed:\n{run.stderr[-3000:]}")
                res = json.loads(run.stdout.splitlines()[-1])
                got[impl, path[-3:]] = res = {k: round(v, 3) for k, v in res.items()}
                emit(**common, impl=impl, file=path[-3:], **res)
            for fmt in ("pth", "npz"):
                ours, ref = got["sam-jax", fmt], got["official", "pth"]
                emit(
                    **common,
                    figure="ratio_ours_over_official",
                    file=fmt,
                    seconds=round(ours["seconds"] / ref["seconds"], 3),
                    cpu_seconds=round(ours["cpu_seconds"] / ref["cpu_seconds"], 3),
                    peak_rss=round(ours["peak_rss_gb"] / ref["peak_rss_gb"], 3),
                )


DEFAULT_PARTS = {"encoder": bench_encoder, "decoder": bench_decoder, "amg": bench_amg, "train": bench_train}


def bench_generate_shards_cpu(args, official, base: dict) -> None:
    from benchmarks.generate_shards import bench

    bench(args, official, base, emit)


PARTS = dict(DEFAULT_PARTS, **{"encoder-cpu": bench_encoder_cpu, "inference-cpu": bench_inference_cpu})
CPU_PARTS = ("encoder-cpu", "inference-cpu")
PARTS["pipeline-cpu"] = bench_pipeline_cpu  # the SA-1B input pipeline (benchmarks/pipeline_cpu.py)
CPU_PARTS += ("pipeline-cpu",)
PARTS["text-prompt-cpu"] = bench_text_prompt_cpu  # training cost of CLIP prompts
CPU_PARTS += ("text-prompt-cpu",)
PARTS["load-cpu"] = bench_load_cpu  # checkpoint load, vit_h by default
CPU_PARTS += ("load-cpu",)
PARTS["generate-shards-cpu"] = bench_generate_shards_cpu  # benchmarks/generate_shards.py
CPU_PARTS += ("generate-shards-cpu",)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument(
        "mode", nargs="?", choices=list(PARTS), help="run this one part (same as --parts MODE)"
    )
    parser.add_argument("--parts", default=",".join(DEFAULT_PARTS), help=f"comma list of {list(PARTS)}")
    parser.add_argument(
        "--variants",
        default=None,
        help="comma list (default vit_b,vit_l,vit_h; vit_b for the CPU comparisons)",
    )
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument(
        "--impls", default="auto", help="attention implementations to sweep: auto,xla,cudnn,decomposed"
    )
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=989.0,
        help="dense bf16 peak of the device, for MFU (H100/H200: 989)",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny configs (CPU smoke run)")
    parser.add_argument("--no-official", action="store_true", help="skip the official package")
    parser.add_argument("--gen-size", type=int, default=512, help="generate-shards-cpu: image short side")
    parser.add_argument("--gen-images", type=int, default=2, help="generate-shards-cpu: timed images")
    parser.add_argument("--gen-gpu-figures", default=None, help="generate-shards-cpu: GPU figures JSONL")
    parser.add_argument("--gen-presets", default="default,sa1b", help="generate-shards-cpu: presets")
    parser.add_argument(
        "--gen-no-warmup", action="store_true", help="generate-shards-cpu: time the compile too"
    )
    args = parser.parse_args(argv)
    if args.mode:
        args.parts = args.mode
    # load-cpu measures vit_h unless --variants says otherwise, also beside other parts.
    args.load_variants = (args.variants or "vit_h").split(",")
    if args.variants is None:
        cpu_only = all(p in CPU_PARTS for p in args.parts.split(","))
        args.variants = "vit_b" if cpu_only else "vit_b,vit_l,vit_h"
    for key in ("parts", "variants", "dtypes", "impls"):
        setattr(args, key, [v for v in getattr(args, key).split(",") if v])
    args.batches = [int(b) for b in args.batches.split(",")]
    if args.tiny:  # every variant is the same tiny model: measure it once
        args.variants, args.load_variants = args.variants[:1], args.load_variants[:1]
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {list(PARTS)}")

    official = None if args.no_official else Official.load()
    dev = jax.devices()[0]
    base = dict(device=getattr(dev, "device_kind", dev.platform), backend=jax.default_backend())
    emit(
        **base,
        bench="environment",
        date=datetime.date.today().isoformat(),
        jax=jax.__version__,
        official=official.device if official else None,
        torch=official.torch.__version__ if official else None,
        tiny=args.tiny,
    )
    for part in args.parts:
        PARTS[part](args, official, base)


if __name__ == "__main__":
    main()
