"""``sam-jax annotate``: the data engine's annotation tool (Kirillov et al. 2023, section 4).

::

    sam-jax annotate IMAGES_DIR --checkpoint sam_vit_b_01ec64.pth --model-type vit_b \\
        --out ANNOTATIONS_DIR [--host 127.0.0.1] [--port 8765] [--prefill]
    sam-jax annotate --stats ANNOTATIONS_DIR

A local web page over a folder of images: clicks and boxes prompt SAM, the
annotator accepts, corrects (brush, eraser) or deletes masks, and every accept
is saved as SA-1B JSON (``store.py``). ``--prefill`` adds the automatic mask
generator's confident masks first (the semi-automatic stage). The server is in
``server.py`` (it needs the ``annotate`` extra: starlette and uvicorn); this
module only parses arguments, so the rest of the command line works without it.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``annotate`` sub-command's arguments (model arguments are added by the caller)."""
    p.add_argument(
        "images",
        nargs="?",
        default=None,
        metavar="IMAGES_DIR",
        help="folder of images to annotate (only its files are served)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="ANNOTATIONS_DIR",
        help="folder of the SA-1B JSON files, one per image (created; resumed if present)",
    )
    p.add_argument(
        "--stats",
        default=None,
        metavar="ANNOTATIONS_DIR",
        help="print seconds per mask and masks per image of a folder of annotations and exit",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument(
        "--prefill",
        action="store_true",
        help="semi-automatic stage: add confident automatic masks when an image is opened",
    )
    p.add_argument(
        "--prefill-iou-thresh",
        type=float,
        default=0.92,
        help="prefill keeps masks whose predicted IoU exceeds this (default 0.92)",
    )
    p.add_argument(
        "--prefill-stability-thresh",
        type=float,
        default=0.97,
        help="prefill keeps masks at least this stable (default 0.97)",
    )
    p.add_argument(
        "--prefill-points-per-side",
        type=int,
        default=32,
        help="prefill's point grid per image side (default 32)",
    )
    p.add_argument(
        "--cache-mb",
        type=float,
        default=1024.0,
        help="memory for cached image embeddings in MiB (default 1024; vit_b/l/h use 4 MiB per image)",
    )
    p.add_argument(
        "--max-request-mb", type=float, default=16.0, help="largest request body accepted, MiB (default 16)"
    )


def main(args: argparse.Namespace, load_model: Callable[[argparse.Namespace], Any]) -> None:
    """Run ``sam-jax annotate`` (``load_model(args)`` builds the model from the model arguments)."""
    from pathlib import Path

    if args.stats is not None:
        from sam_jax.annotate.store import annotation_stats, format_stats

        print(format_stats(annotation_stats(args.stats)))
        return
    if args.images is None or args.out is None:
        raise SystemExit("error: give IMAGES_DIR and --out ANNOTATIONS_DIR (or --stats ANNOTATIONS_DIR)")
    if not Path(args.images).is_dir():
        raise SystemExit(f"error: images folder {args.images} does not exist")
    if not 0 <= args.port <= 65535:
        raise SystemExit(f"error: --port must be in 0-65535, got {args.port}")
    try:
        from sam_jax.annotate import server
    except ImportError as e:
        raise SystemExit(
            f"error: the annotation server needs the 'annotate' extra (pip install 'sam-jax[annotate]'): {e}"
        ) from None
    from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator
    from sam_jax.predictor import SamPredictor

    sock = server.bind(args.host, args.port)
    model = load_model(args)
    generator = None
    if args.prefill:
        generator = SamAutomaticMaskGenerator(
            model,
            points_per_side=args.prefill_points_per_side,
            pred_iou_thresh=args.prefill_iou_thresh,
            stability_score_thresh=args.prefill_stability_thresh,
            output_mode="coco_rle",
        )
    app = server.create_app(
        args.images,
        args.out,
        make_predictor=lambda: SamPredictor(model),
        generator=generator,
        cache_bytes=int(args.cache_mb * 2**20),
        max_body_bytes=int(args.max_request_mb * 2**20),
        warmup=True,
    )
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(f"annotating {args.images} -> {args.out}: open http://{shown}:{port}/ (Ctrl+C stops)", flush=True)
    server.make_server(app, sock).run(sockets=[sock])


__all__ = ["add_arguments", "main"]
