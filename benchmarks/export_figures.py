"""Figures of the serving artifacts: sizes, load times and parity with the live model.

Exports a variant (random weights shared with the official release through a
``.pth``, or ``--checkpoint``) as StableHLO (weights baked and as inputs) and
the decoder as ONNX, reloads each artifact and prints one JSON line per
figure: artifact size, export time, load time (deserialise / session
creation), first call (compiles) and second call, and the max-abs error
against the live model; for ONNX also against the official ``SamOnnxModel``
exported by ``torch.onnx.export`` from the same weights. Usage:
``python -m benchmarks.export_figures [--variant vit_b] [--out DIR] [--parts ...]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def emit(**record) -> None:
    print(
        json.dumps({k: (float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in record.items()}),
        flush=True,
    )


def max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="vit_b", choices=["vit_b", "vit_l", "vit_h", "tiny"])
    parser.add_argument("--out", type=Path, default=None, help="artifact folder (default: temp)")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["image_encoder", "mask_decoder"],
        choices=["image_encoder", "mask_decoder"],
        help="StableHLO parts",
    )
    args = parser.parse_args()

    import jax
    import onnxruntime as ort

    from benchmarks.reference_sam import official_and_ours, official_onnx_decoder, torch
    from configs.tiny import TINY
    from sam_jax.export import export_onnx, export_part, load_exported
    from sam_jax.geometry import resized_shape
    from sam_jax.modeling.sam import postprocess_masks
    from sam_jax.modeling.variants import VARIANTS

    out = args.out or Path(tempfile.mkdtemp(prefix="sam_export_"))
    out.mkdir(parents=True, exist_ok=True)
    config = TINY if args.variant == "tiny" else VARIANTS[args.variant]
    sam, model = official_and_ours(config, out)
    s, r = config.image_size, config.low_res_size
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(1, s, s, 3)).astype(np.float32)
    if "image_encoder" in args.parts:
        emb, t_live = timed(lambda: np.asarray(model.embed_images(pixels)))
        emit(figure="live_encoder_first_call_s", variant=args.variant, value=t_live)
    else:  # decoder figures only: a random embedding
        emb = rng.normal(
            size=(1, config.embedding_size, config.embedding_size, config.prompt_embed_dim)
        ).astype(np.float32)
    coords = rng.uniform(0, s, (2, 3, 2)).astype(np.float32)
    labels = np.array([[1, 0, 1], [1, -2, -2]], np.int32)
    boxes = np.array([[100, 120, 600, 700], [0, 0, 0, 0]], np.float32) * s / 1024
    dec_in = {
        "image_embeddings": emb,
        "point_coords": coords,
        "point_labels": labels,
        "boxes": boxes,
        "box_valid": np.array([True, False]),
        "mask_input": rng.normal(size=(2, r, r)).astype(np.float32),
        "has_mask_input": np.array([False, True]),
    }
    live = [
        model.decode(
            emb,
            coords,
            labels,
            boxes,
            dec_in["mask_input"],
            mm,
            dec_in["box_valid"],
            dec_in["has_mask_input"],
        )
        for mm in (False, True)
    ]
    live_low = np.concatenate([np.asarray(x[0]) for x in live], 1)

    for weights in ("constants", "inputs"):
        sub = out / weights
        for part in args.parts:
            t0 = time.perf_counter()
            path = export_part(model, part, sub, weights=weights)
            t_export = time.perf_counter() - t0
            size = path.stat().st_size
            if weights == "inputs":
                size += (sub / f"{part}.weights.npz").stat().st_size
            module = load_exported(path)
            feed = {"pixels": pixels} if part == "image_encoder" else dec_in
            args_ = [feed[n] for n in module.input_names]
            t0 = time.perf_counter()
            res = jax.block_until_ready(module(*args_))
            t1 = time.perf_counter()
            jax.block_until_ready(module(*args_))
            t_first, t_second = t1 - t0, time.perf_counter() - t1
            ref = emb if part == "image_encoder" else live_low
            got = res["image_embeddings" if part == "image_encoder" else "low_res_masks"]
            emit(
                figure="stablehlo",
                variant=args.variant,
                part=part,
                weights=weights,
                size_mib=size / 2**20,
                export_s=t_export,
                load_s=module.load_seconds,
                first_call_s=t_first,
                second_call_s=t_second,
                max_abs_err_vs_live=max_abs(got, ref),
            )

    # ONNX decoder: ours vs live, and vs the official export of the same weights.
    orig = (768, 1024)
    pts = np.array([[[500.0, 375.0], [620, 300], [0, 0]]], np.float32) * s / 1024
    lab = np.array([[1, 0, -1]], np.float32)
    feed = {
        "image_embeddings": np.ascontiguousarray(emb.transpose(0, 3, 1, 2)),
        "point_coords": pts,
        "point_labels": lab,
        "mask_input": np.zeros((1, 1, r, r), np.float32),
        "has_mask_input": np.zeros(1, np.float32),
        "orig_im_size": np.array(orig, np.float32),
    }
    path, t_export = timed(lambda: export_onnx(model, out / "sam_decoder.onnx"))
    sess, t_load = timed(lambda: ort.InferenceSession(str(path)))
    res, t_first = timed(lambda: sess.run(None, feed))
    _, t_second = timed(lambda: sess.run(None, feed))
    low = np.concatenate(
        [
            np.asarray(model.decode(emb, pts[:, :2], lab[:, :2].astype(np.int32), None, None, mm)[0])
            for mm in (False, True)
        ],
        1,
    )
    up = np.asarray(postprocess_masks(low, resized_shape(*orig, s), orig, s))
    dummy = {k: torch.from_numpy(v) for k, v in feed.items()}
    official_onnx = official_onnx_decoder(sam, dummy)
    official = ort.InferenceSession(official_onnx).run(None, feed)
    emit(
        figure="onnx_decoder",
        variant=args.variant,
        size_mib=path.stat().st_size / 2**20,
        official_size_mib=len(official_onnx) / 2**20,
        export_s=t_export,
        load_s=t_load,
        first_call_s=t_first,
        second_call_s=t_second,
        max_abs_err_vs_live_masks=max_abs(res[0], up),
        max_abs_err_vs_live_low_res=max_abs(res[2], low),
        max_abs_err_vs_official_masks=max_abs(res[0], official[0]),
        max_abs_err_vs_official_iou=max_abs(res[1], official[1]),
        max_abs_err_vs_official_low_res=max_abs(res[2], official[2]),
    )


if __name__ == "__main__":
    main()
