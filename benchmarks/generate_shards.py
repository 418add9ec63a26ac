"""Throughput of dataset-scale generation (``sam-jax generate-shards``) and the cost of SA-1B.

``python -m benchmarks.run generate-shards-cpu`` (a mode of the suite): vit_b with
random weights on this machine's CPU, synthetic JPEGs of ``--gen-size`` (short side;
3:2), through :class:`sam_jax.automatic_generation.ShardWriter` into SA-1B shards,
once with the ``default`` preset and once with ``sa1b`` (``--gen-presets``). One image
of each preset is generated first to compile (not timed; ``--gen-no-warmup`` times
the compile too). Each timed run emits images/s, seconds
and CPU seconds per image, masks per image.

Then the projected cost of the paper's 11M images on one H200, from per-call
figures: image encoder ms/image at batch 8 in bfloat16 and prompt encoder + decoder
ms per call of 64 points (``--gen-gpu-figures``, JSON lines with ``part``,
``model``, ``dtype``, ``batch``/``prompts`` and ``ms_per_image``/``ms_per_call``;
the default is the H200 anchors of the official PyTorch release in
``../shared/anchors/``, as sam-jax has no H200 figures yet). A preset needs per
image ``crops`` encoder passes and, per crop, ``ceil(points / 64)`` decoder calls.
The projection covers device time only; mask post-processing on the host (RLE,
NMS, small-region cleanup) runs beside it on the host's cores.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "anchors" / "h200-2026-11-30" / "torch_sam.jsonl"
SA1B_IMAGES = 11_000_000


def preset_work(settings: dict) -> dict:
    """Encoder passes (crops) and 64-point decoder calls per image of a preset."""
    from sam_jax.amg import build_all_layer_point_grids

    grids = build_all_layer_point_grids(
        settings["points_per_side"], settings["crop_n_layers"], settings["crop_n_points_downscale_factor"]
    )
    crops = [4**k for k in range(settings["crop_n_layers"] + 1)]
    return {
        "crops": sum(crops),
        "points": sum(n * len(g) for n, g in zip(crops, grids)),
        "decoder_calls_64": sum(n * math.ceil(len(g) / 64) for n, g in zip(crops, grids)),
    }


def gpu_figures(path: Path, model: str) -> dict:
    """``{"encoder_ms": ..., "decoder_ms_64": ...}`` (bfloat16) of ``model`` from ``path``."""
    enc = dec = None
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r.get("model") != model or r.get("dtype") not in ("bf16", "bfloat16"):
            continue
        if r.get("part") == "image_encoder" and r.get("batch") == 8:
            enc = r["ms_per_image"]
        if r.get("part") == "prompt+decoder" and r.get("prompts") == 64:
            dec = r["ms_per_call"]
    if enc is None or dec is None:
        raise ValueError(f"{path} lacks the {model} bf16 encoder (batch 8) or 64-prompt decoder figure")
    return {"encoder_ms": enc, "decoder_ms_64": dec}


def bench(args, official, base: dict, emit) -> None:
    from configs.tiny import TINY_TRAIN
    from data.synthetic import encode_jpeg, generate_image
    from sam_jax import automatic_generation as ag
    from sam_jax.modeling.variants import VARIANTS
    from sam_jax.sam_model import build_sam

    tiny = args.tiny
    size = 64 if tiny else args.gen_size
    warm = 0 if args.gen_no_warmup else 1
    counts = {"default": (warm, 1 if tiny else args.gen_images), "sa1b": (warm, 1)}
    counts = {k: v for k, v in counts.items() if k in args.gen_presets.split(",")}
    model = build_sam(TINY_TRAIN if tiny else VARIANTS["vit_b"])
    with tempfile.TemporaryDirectory() as tmp:
        for preset, (warm, timed) in counts.items():
            settings = ag.settings_for(preset, **({"points_per_side": 4} if tiny else {}))
            gen = ag.make_generator(model, settings)
            for phase, n in (("compile", warm), ("timed", timed)):
                if n == 0:
                    continue
                folder = Path(tmp) / f"{preset}-{phase}"
                folder.mkdir()
                for i in range(n):
                    img = generate_image(seed=11, index=i, short_side=size, aspect=1.5).image
                    (folder / f"im{i}.jpg").write_bytes(encode_jpeg(img))
                writer = ag.ShardWriter(
                    gen,
                    ag.list_inputs([folder]),
                    Path(tmp) / f"out-{preset}-{phase}",
                    settings,
                    embed_batch=2,
                )
                t0, c0 = time.time(), time.process_time()
                st = writer.run(progress=False)
                wall, cpu = time.time() - t0, time.process_time() - c0
                if phase == "timed":
                    emit(
                        **base,
                        bench="generate_shards",
                        variant="tiny" if tiny else "vit_b",
                        preset=preset,
                        image=[size, int(size * 1.5)],
                        images=n,
                        compile_included=warm == 0,
                        images_per_s=n / wall,
                        s_per_image=wall / n,
                        cpu_s_per_image=cpu / n,
                        masks_per_image=st["masks"] / n,
                        load_avg=os.getloadavg()[0],
                        **preset_work(settings),
                    )
    path = Path(args.gen_gpu_figures) if args.gen_gpu_figures else ANCHORS
    if not path.is_file():
        emit(**base, bench="generate_shards_projection", skipped=f"no GPU figures at {path}")
        return
    for model_name in ("vit_h", "vit_b"):
        fig = gpu_figures(path, model_name)
        for preset in ("default", "sa1b"):
            w = preset_work(ag.settings_for(preset))
            ms = w["crops"] * fig["encoder_ms"] + w["decoder_calls_64"] * fig["decoder_ms_64"]
            emit(
                **{**base, "device": "one H200"},
                bench="generate_shards_projection",
                figures=str(path),
                variant=model_name,
                preset=preset,
                **fig,
                **w,
                ms_per_image=ms,
                images_per_s=1e3 / ms,
                sa1b_images=SA1B_IMAGES,
                gpu_hours=SA1B_IMAGES * ms / 3.6e6,
                gpu_days=SA1B_IMAGES * ms / 8.64e7,
            )
