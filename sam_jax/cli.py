"""The ``sam-jax`` command line.

::

    sam-jax segment IMAGE --point X,Y[,LABEL] ... [--box X0,Y0,X1,Y1] [--text PHRASE] --out DIR
    sam-jax generate IMAGE_OR_FOLDER --out DIR
    sam-jax generate-shards INPUTS... --out DIR [--preset sa1b]   (see sam_jax.automatic_generation)
    sam-jax convert CHECKPOINT.pth OUT.npz
    sam-jax export --out DIR [--format stablehlo onnx]
    sam-jax annotate IMAGES_DIR --out ANNOTATIONS_DIR [--prefill]   (see sam_jax.annotate)

``segment`` writes ``<stem>_mask<i>.png`` (one per predicted mask, 0/255),
``<stem>_overlay.png`` and ``<stem>_scores.json``. ``generate`` writes, per image,
``<stem>.json`` in the SA-1B schema (COCO RLE masks) and ``<stem>_overlay.png``; an
image it cannot read or process is skipped with a warning, and the exit status is the
number of images that failed (0 = all written). Bad input (``--out`` not a folder, a
missing or damaged checkpoint, a bad prompt) is a one-line error, checked before the
model is built where possible.
The model is chosen with ``--model-type`` and ``--checkpoint`` (an official
``.pth`` or a converted ``.npz``); without a checkpoint its weights are random
and a warning says so. ``--config-json`` (advanced) builds a custom
``SamConfig`` from a JSON object instead of a named variant.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from sam_jax.atomic_io import write_json
from sam_jax.image_files import IMAGE_SUFFIXES


def _floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in n or not np.all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(
            f"{what} must be {' or '.join(str(k) for k in n)} comma-separated numbers, got {text!r}"
        )
    return values


def _point(text: str) -> list[float]:
    values = _floats(text, (2, 3), "--point")
    if len(values) == 3 and values[2] not in (0.0, 1.0):
        raise argparse.ArgumentTypeError(f"point label must be 0 or 1, got {text!r}")
    return values if len(values) == 3 else values + [1.0]


def _box(text: str) -> list[float]:
    return _floats(text, (4,), "--box")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="official .pth or converted .npz weights (default: random weights)",
    )
    p.add_argument(
        "--model-type",
        default="vit_h",
        choices=["vit_b", "vit_l", "vit_h"],
        help="model variant (default: vit_h)",
    )
    p.add_argument("--config-json", default=None, help=argparse.SUPPRESS)


def _custom_config(args: argparse.Namespace):
    """The ``SamConfig`` of ``--config-json`` (every field given, or the defaults), or None."""
    from sam_jax.modeling.variants import config_from_json

    if not args.config_json:
        return None
    try:
        return config_from_json(args.config_json)
    except ValueError as e:
        raise SystemExit(f"error: bad --config-json: {e}") from None


def _load_model(args: argparse.Namespace, text_embed_dim: int = 0):
    from sam_jax.modeling.variants import get_config
    from sam_jax.sam_model import build_sam

    variant = _custom_config(args) or args.model_type
    if text_embed_dim:
        variant = get_config(variant, text_embed_dim=text_embed_dim)
    if args.checkpoint is None:
        print(
            f"warning: no --checkpoint given: {args.model_type if not args.config_json else 'custom'}"
            " model has RANDOM weights; its masks are meaningless",
            file=sys.stderr,
        )
    else:
        _check_checkpoint(args.checkpoint)
    return build_sam(variant, checkpoint=args.checkpoint)


def _check_checkpoint(path: Path) -> None:
    if path.is_dir():
        raise SystemExit(f"error: checkpoint {path} is a directory, not a .pth or .npz file")
    if not path.is_file():
        raise SystemExit(f"error: checkpoint {path} does not exist")


def _output_dir(path: Path) -> None:
    """Create ``--out`` (or check it is a writable folder) before any model work."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = "it exists and is not a folder" if path.exists() else e.strerror or str(e)
        raise SystemExit(f"error: cannot use --out {path} as the output folder: {why}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SystemExit(f"error: output folder {path} is not writable")


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


# ----------------------------------------------------------------------------- commands


def _segment(args: argparse.Namespace) -> None:
    from sam_jax.predictor import SamPredictor
    from sam_jax.visualize import save_overlay

    if not args.point and args.box is None and args.text is None:
        raise SystemExit("error: give at least one --point, a --box or a --text")
    _output_dir(args.out)
    image = _read_image(args.image)
    clip = None
    if args.text is not None:
        if args.clip_checkpoint is None or not args.clip_checkpoint.is_file():
            raise SystemExit(
                "error: --text needs --clip-checkpoint (an OpenAI CLIP .pt file, "
                f"e.g. ViT-L-14-336px.pt); got {args.clip_checkpoint}"
            )
        from sam_jax.clip import build_clip

        clip = build_clip(checkpoint=args.clip_checkpoint)
    predictor = SamPredictor(_load_model(args, clip.config.embed_dim if clip else 0), clip=clip)
    predictor.set_image(image)
    coords = labels = None
    if args.point:
        pts = np.asarray(args.point, np.float64)
        coords, labels = pts[:, :2], pts[:, 2].astype(np.int32)
    box = None if args.box is None else np.asarray(args.box, np.float64)
    masks, iou, _ = predictor.predict(coords, labels, box, multimask_output=not args.single, text=args.text)
    stem = args.image.stem
    for i, m in enumerate(masks):
        Image.fromarray(m.astype(np.uint8) * 255).save(args.out / f"{stem}_mask{i}.png")
    best = int(np.argmax(iou))
    save_overlay(
        args.out / f"{stem}_overlay.png",
        image,
        masks=masks[best : best + 1],
        points=coords,
        labels=labels,
        boxes=None if box is None else box[None],
    )
    write_json(
        args.out / f"{stem}_scores.json", {"predicted_iou": [float(v) for v in iou], "best": best}, indent=1
    )
    print(
        f"wrote {len(masks)} masks and an overlay to {args.out} (best mask {best}, "
        f"predicted IoU {iou[best]:.3f})"
    )


def _generate(args: argparse.Namespace) -> None:
    """Masks for every image; a bad image is warned about and skipped, and the exit status
    is the number of images that failed (capped at 125; 0 = all written)."""
    from tqdm import tqdm

    from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator

    if args.input.is_dir():
        paths = sorted(p for p in args.input.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise SystemExit(f"error: no images ({', '.join(IMAGE_SUFFIXES)}) in {args.input}")
    elif args.input.is_file():
        paths = [args.input]
    else:
        raise SystemExit(f"error: {args.input} does not exist")
    _output_dir(args.out)
    generator = SamAutomaticMaskGenerator(
        _load_model(args),
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
        crop_n_layers=args.crop_n_layers,
        min_mask_region_area=args.min_mask_region_area,
        output_mode="coco_rle",
    )
    failed = []
    for image_id, path in enumerate(tqdm(paths, desc="images", unit="img", disable=len(paths) == 1)):
        try:
            n = _generate_one(generator, path, image_id, args.out)
        except Exception as e:  # noqa: BLE001 - one bad image must not stop the others
            failed.append(path)
            tqdm.write(f"warning: skipped {path.name}: {type(e).__name__}: {e}", file=sys.stderr)
            continue
        tqdm.write(f"{path.name}: {n} masks")
    if failed:
        print(
            f"{len(failed)} of {len(paths)} images failed: {', '.join(p.name for p in failed)}",
            file=sys.stderr,
        )
        raise SystemExit(min(len(failed), 125))


def _generate_one(generator, path: Path, image_id: int, out: Path) -> int:
    """Write ``<stem>.json`` and ``<stem>_overlay.png`` for one image; the number of masks."""
    from pycocotools import mask as mask_utils

    from sam_jax.sa1b_json import sa1b_record
    from sam_jax.visualize import save_overlay

    image = _read_image(path)
    records = generator.generate(image)
    doc = sa1b_record(records, path.name, image_id, image.shape)
    write_json(out / f"{path.stem}.json", doc)
    masks = [
        mask_utils.decode(dict(r["segmentation"], counts=r["segmentation"]["counts"].encode())).astype(bool)
        for r in records
    ]
    save_overlay(out / f"{path.stem}_overlay.png", image, masks=np.stack(masks) if masks else None)
    return len(records)


def _convert(args: argparse.Namespace) -> None:
    from sam_jax.sam_model import convert_checkpoint

    _check_checkpoint(args.src)
    if not args.dst.parent.is_dir():
        raise SystemExit(f"error: output folder {args.dst.parent} does not exist")
    variant = convert_checkpoint(args.src, args.dst, _custom_config(args) or args.model_type)
    print(f"wrote {args.dst} ({variant})")


def _export(args: argparse.Namespace) -> None:
    from sam_jax.export import run

    _output_dir(args.out)
    run(args, _load_model(args))


def _annotate(args: argparse.Namespace) -> None:
    from sam_jax import annotate

    annotate.main(args, _load_model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam-jax",
        description="Segment Anything in JAX: prompted segmentation, automatic "
        "mask generation and checkpoint conversion.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    seg = sub.add_parser(
        "segment",
        help="masks for points and/or a box",
        description="Predict masks for point and box prompts (pixels of the original image). "
        "Writes <stem>_mask<i>.png (0/255), <stem>_overlay.png (best mask, prompts) and "
        "<stem>_scores.json (predicted IoU of each mask).",
    )
    seg.add_argument("image", type=Path, help="input image (any format PIL reads)")
    seg.add_argument(
        "--point",
        type=_point,
        action="append",
        default=[],
        metavar="X,Y[,LABEL]",
        help="a prompt point; LABEL 1 foreground (default) or 0 background; repeat for several",
    )
    seg.add_argument(
        "--box", type=_box, default=None, metavar="X0,Y0,X1,Y1", help="a box prompt (XYXY pixels)"
    )
    seg.add_argument(
        "--text",
        default=None,
        metavar="PHRASE",
        help="a text prompt (needs --clip-checkpoint and a SAM trained with text "
        "prompts, e.g. --checkpoint of sam-jax training with text.enabled)",
    )
    seg.add_argument(
        "--clip-checkpoint",
        type=Path,
        default=None,
        help="OpenAI CLIP weights for --text (TorchScript .pt, read without torch)",
    )
    seg.add_argument("--single", action="store_true", help="predict one mask instead of three candidates")
    seg.add_argument("--out", type=Path, required=True, help="output folder")
    _add_model_args(seg)
    seg.set_defaults(func=_segment)

    gen = sub.add_parser(
        "generate",
        help="automatic masks for an image or every image in a folder",
        description="Automatic mask generation from a grid of points. Writes, per image, "
        "<stem>.json (SA-1B schema, COCO RLE masks) and <stem>_overlay.png.",
    )
    gen.add_argument("input", type=Path, help="an image or a folder of images")
    gen.add_argument("--out", type=Path, required=True, help="output folder")
    gen.add_argument(
        "--points-per-side",
        type=int,
        default=32,
        help="grid points per image side (default 32 = 1024 prompts)",
    )
    gen.add_argument(
        "--points-per-batch",
        type=int,
        default=64,
        help="points decoded per call (memory vs speed; default 64)",
    )
    gen.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=0.88,
        help="keep masks whose predicted IoU exceeds this (default 0.88)",
    )
    gen.add_argument(
        "--stability-score-thresh",
        type=float,
        default=0.95,
        help="keep masks at least this stable under logit offsets (default 0.95)",
    )
    gen.add_argument(
        "--box-nms-thresh",
        type=float,
        default=0.7,
        help="box IoU above which duplicate masks are dropped (default 0.7)",
    )
    gen.add_argument(
        "--crop-n-layers",
        type=int,
        default=0,
        help="extra layers of zoomed-in crops (layer k has 4^k crops; default 0)",
    )
    gen.add_argument(
        "--min-mask-region-area",
        type=int,
        default=0,
        help="fill holes / drop islands smaller than this many pixels (default 0)",
    )
    _add_model_args(gen)
    gen.set_defaults(func=_generate)

    conv = sub.add_parser(
        "convert",
        help="convert an official .pth checkpoint to .npz",
        description="Convert an official SAM .pth checkpoint into sam-jax's .npz format "
        "(read without torch; no code in the file runs).",
    )
    conv.add_argument("src", type=Path, help="official checkpoint, e.g. sam_vit_b_01ec64.pth")
    conv.add_argument("dst", type=Path, help="output .npz")
    conv.add_argument(
        "--model-type",
        default=None,
        choices=["vit_b", "vit_l", "vit_h"],
        help="variant (default: guessed from the weights)",
    )
    conv.add_argument("--config-json", default=None, help=argparse.SUPPRESS)
    conv.set_defaults(func=_convert)

    from sam_jax.export import add_arguments as add_export_arguments

    exp = sub.add_parser(
        "export",
        help="export for serving: StableHLO modules and the ONNX decoder",
        description="Write the image encoder and the prompt encoder + mask decoder as serialised "
        "StableHLO (jax.export; <part>.stablehlo + <part>.json) and/or the decoder as ONNX with "
        "the official SamOnnxModel interface (sam_decoder.onnx).",
    )
    add_export_arguments(exp)
    _add_model_args(exp)
    exp.set_defaults(func=_export)

    from sam_jax import annotate

    ann = sub.add_parser(
        "annotate",
        help="browser annotation tool: click, SAM draws the mask (SA-1B JSON out)",
        description="Serve a local web page for SAM-assisted annotation of a folder of images; "
        "every accepted mask is saved as SA-1B JSON in --out. --stats summarises a folder of them.",
    )
    annotate.add_arguments(ann)
    _add_model_args(ann)
    ann.set_defaults(func=_annotate)

    from sam_jax import automatic_generation

    shards = sub.add_parser(
        "generate-shards",
        help="automatic masks for a whole corpus, written as SA-1B tar shards (data engine stage 3)",
        description=automatic_generation.__doc__.splitlines()[0],
    )
    automatic_generation.add_arguments(shards)
    _add_model_args(shards)
    shards.set_defaults(func=lambda a: automatic_generation.main(a, _load_model))

    from sam_jax.evaluation.runner import add_parser as add_eval_parser

    add_eval_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, OSError) as e:  # bad input (image, checkpoint, prompt): one line
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
