"""One entry point for the four zero-shot protocols: ``sam-jax eval`` and :func:`evaluate`.

::

    sam-jax eval {points,edges,proposals,instances} DATA --checkpoint CKPT --out DIR [options]

``DATA`` is a COCO JSON (``--images`` folder), an SA-1B folder or tar shards,
or an image folder with ``--labels`` label maps; the edge protocol takes an
image folder with ``--edges`` human edge maps (BSDS ``.mat`` or PNG).
``CKPT`` is an official ``.pth``, our ``.npz`` or a training workdir (its newest
orbax checkpoint, read without changing anything; ``--train-config`` names its
config). ``DIR`` receives ``results.json`` (schema in :mod:`report`),
``results.md``, a plot and ``per_image.jsonl``; an interrupted run continues
where it stopped when started again with the same arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from sam_jax.atomic_io import write_text
from sam_jax.evaluation.report import markdown_report, result_document

PROTOCOLS = ("points", "edges", "proposals", "instances")
PLOT_NAMES = {
    "points": "miou_vs_clicks.png",
    "edges": "precision_recall.png",
    "proposals": "recall_vs_proposals.png",
    "instances": "ap.png",
}


def make_protocol(name: str, **settings: Any):
    """The protocol object of ``name`` with its settings (keyword arguments)."""
    if name == "points":
        from sam_jax.evaluation.points import PointSettings, PointsProtocol

        return PointsProtocol(PointSettings(**settings))
    if name == "proposals":
        from sam_jax.evaluation.proposals import ProposalSettings, ProposalsProtocol

        return ProposalsProtocol(ProposalSettings(**settings))
    if name == "instances":
        from sam_jax.evaluation.instances import InstanceSettings, InstancesProtocol

        return InstancesProtocol(InstanceSettings(**settings))
    if name == "edges":
        from sam_jax.evaluation.edges import EdgeSettings, EdgesProtocol

        return EdgesProtocol(EdgeSettings(**settings))
    raise ValueError(f"unknown protocol {name!r}; known: {PROTOCOLS}")


# ----------------------------------------------------------------------------- models


def load_model(
    checkpoint: str | os.PathLike | None,
    model_type: Any = None,
    train_config: str | None = None,
    config_overrides: tuple[str, ...] = (),
) -> tuple[Any, dict]:
    """A ``SamModel`` and a description of it, from an official ``.pth``, our ``.npz``,
    a training workdir (newest orbax checkpoint, read-only) or None (random weights).
    ``model_type``: a variant name or a ``SamConfig`` (guessed from a ``.pth`` if None)."""
    from sam_jax import build_sam

    if checkpoint is None:
        variant = model_type or "vit_h"
        model = build_sam(variant)
        return model, {
            "checkpoint": "random weights",
            "variant": model.variant,
            "image_size": model.config.image_size,
            "step": None,
        }
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        return _load_workdir(path, train_config, config_overrides)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    variant = model_type
    if variant is None:
        if path.endswith(".npz"):
            raise ValueError("an .npz checkpoint needs --model-type (vit_b, vit_l or vit_h)")
        from sam_jax.checkpoint import read_pth
        from sam_jax.modeling.variants import guess_variant

        variant = guess_variant(read_pth(path))
    model = build_sam(variant, checkpoint=path)
    return model, {
        "checkpoint": os.path.abspath(path),
        "variant": model.variant,
        "image_size": model.config.image_size,
        "step": None,
    }


def _load_workdir(workdir: str, train_config: str | None, overrides: tuple[str, ...]):
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise FileNotFoundError(
            f"{workdir} is a folder but has no checkpoints/ (expected a "
            "training workdir, an official .pth or an .npz file)"
        )
    if not train_config:
        raise ValueError(
            "a training workdir needs --train-config (the config it was trained with, e.g. configs/tiny.py)"
        )
    try:
        from configs import load_config
        from train.evaluate import restore_params
    except ImportError as e:
        raise ValueError(
            "loading a training workdir needs the repository's train/ and configs/ packages: run "
            f"from the root of a checkout as `python -m sam_jax.cli ...` ({e})"
        ) from None
    from sam_jax import SamModel

    config = load_config(train_config, list(overrides))
    module, params, step = restore_params(config, workdir)
    variant = str(config.model.variant) + (" (with overrides)" if config.model.get("overrides") else "")
    model = SamModel(module=module, params=params, variant="custom")
    return model, {
        "checkpoint": os.path.abspath(workdir),
        "variant": variant,
        "image_size": module.config.image_size,
        "step": step,
    }


# ----------------------------------------------------------------------------- driver


def _read_records(path: str) -> dict[int, dict]:
    done: dict[int, dict] = {}
    if not os.path.exists(path):
        return done
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by an interruption
            done[int(rec["image_id"])] = rec
    return done


def evaluate(
    protocol: str | Any,
    dataset: Any,
    model: Any,
    out: str | None = None,
    model_info: dict | None = None,
    progress: bool = True,
    **settings: Any,
) -> dict:
    """Run a protocol over a dataset and return the result document (:mod:`report`).

    Args:
      protocol: a name from :data:`PROTOCOLS` (with ``settings`` as keyword
        arguments) or a protocol object.
      dataset: an :class:`~sam_jax.evaluation.datasets.EvalDataset` (or, for
        edges, an :class:`~sam_jax.evaluation.edges.EdgeDataset`).
      model: a ``SamModel`` (or a stub the protocol accepts).
      out: output folder (results.json, results.md, plot, per_image.jsonl); None
        writes nothing.
    """
    from tqdm import tqdm

    proto = make_protocol(protocol, **settings) if isinstance(protocol, str) else protocol
    settings_doc = proto.settings.to_dict()
    ds = dataset.summary()
    done: dict[int, dict] = {}
    log = None
    if out is not None:
        os.makedirs(out, exist_ok=True)
        header = {"protocol": proto.name, "settings": settings_doc, "dataset": ds, "model": model_info or {}}
        run_path = os.path.join(out, "run.json")
        if os.path.exists(run_path):
            with open(run_path) as f:
                old = json.load(f)
            if json.loads(json.dumps(header)) != old:
                raise ValueError(
                    f"{out} holds another evaluation (different protocol, settings, "
                    "data or model); choose another --out or delete it"
                )
        else:
            write_text(run_path, json.dumps(header, indent=1))
        log_path = os.path.join(out, "per_image.jsonl")
        done = _read_records(log_path)
        log = open(log_path, "a")
    proto.setup(model)
    records, timed, seconds = [], 0, 0.0
    try:
        bar = tqdm(dataset, desc=f"eval {proto.name}", unit="img", disable=not progress, dynamic_ncols=True)
        for item in bar:
            if item.image_id in done:
                records.append(done[item.image_id])
                continue
            t0 = time.perf_counter()
            rec = proto.run_image(item)
            seconds += time.perf_counter() - t0
            timed += 1
            records.append(rec)
            if log is not None:
                log.write(json.dumps(rec) + "\n")
                log.flush()
    finally:
        if log is not None:
            log.close()
    metrics = proto.summarize(records, dataset)
    timing = {
        "seconds": round(seconds, 3),
        "images": timed,
        "images_per_s": timed / seconds if seconds > 0 else float("nan"),
    }
    doc = result_document(proto.name, ds, model_info or {}, settings_doc, metrics, timing)
    if out is not None:
        write_text(os.path.join(out, "results.json"), json.dumps(doc, indent=1))
        write_text(os.path.join(out, "results.md"), markdown_report(doc, proto.table(metrics)))
        proto.plot(metrics, os.path.join(out, PLOT_NAMES[proto.name]))
    return doc


# ----------------------------------------------------------------------------- CLI


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_parser(sub: Any) -> None:
    """Register ``sam-jax eval`` on the CLI's subparsers."""
    p = sub.add_parser(
        "eval",
        help="zero-shot evaluation: points, edges, proposals, instances",
        description=__doc__.split("\n\n")[0] + " Writes results.json, results.md, a plot and "
        "per_image.jsonl to --out.",
    )
    p.add_argument("protocol", choices=PROTOCOLS)
    p.add_argument("data", help="COCO JSON, SA-1B folder/tar, or image folder (with --labels / --edges)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--checkpoint", default=None, help=".pth, .npz or training workdir (default: random weights)"
    )
    p.add_argument(
        "--model-type",
        default=None,
        choices=["vit_b", "vit_l", "vit_h"],
        help="variant (guessed from a .pth; required for .npz)",
    )
    p.add_argument("--config-json", default=None, help=argparse.SUPPRESS)
    p.add_argument("--train-config", default=None, help="config of a training workdir, e.g. configs/tiny.py")
    p.add_argument(
        "--train-config-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override of --train-config (repeatable)",
    )
    p.add_argument("--images", default=None, help="image folder of a COCO JSON")
    p.add_argument("--labels", default=None, help="label-map folder (instance ids, 0 background)")
    p.add_argument("--edges", default=None, help="human edge maps (edges protocol)")
    p.add_argument("--min-area", type=float, default=0, help="drop GT masks smaller than this")
    p.add_argument(
        "--max-masks",
        type=int,
        default=None,
        help="seeded subsample of at most this many masks (the paper: 10000)",
    )
    p.add_argument("--max-images", type=int, default=None, help="first N images only")
    p.add_argument("--seed", type=int, default=0, help="subsampling and random-click seed")
    p.add_argument(
        "--clicks",
        type=_ints,
        default=(1, 2, 3, 5, 9),
        help="points: click counts reported (default 1,2,3,5,9; at most 20)",
    )
    p.add_argument("--first-click", default="center", choices=["center", "random"])
    p.add_argument("--masks-per-batch", type=int, default=16, help="points/instances: masks decoded per call")
    p.add_argument(
        "--detections",
        default=None,
        help="instances: COCO results JSON of detector boxes (default: GT boxes)",
    )
    p.add_argument(
        "--points-per-side",
        type=int,
        default=None,
        help="edges/proposals: AMG grid (default 16 edges, 64 proposals)",
    )
    p.add_argument("--points-per-batch", type=int, default=64, help="AMG points per call")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_cli)


def _settings(args: argparse.Namespace) -> dict:
    if args.protocol == "points":
        return dict(
            clicks=args.clicks,
            first_click=args.first_click,
            seed=args.seed,
            masks_per_batch=args.masks_per_batch,
        )
    if args.protocol == "instances":
        return dict(detections=args.detections, boxes_per_batch=args.masks_per_batch)
    pps = {} if args.points_per_side is None else {"points_per_side": args.points_per_side}
    return dict(points_per_batch=args.points_per_batch, **pps)


def run_cli(args: argparse.Namespace) -> None:
    from sam_jax.evaluation.datasets import DatasetError, load_dataset

    try:
        if args.protocol == "edges":
            from sam_jax.evaluation.edges import load_edge_dataset

            if args.edges is None:
                raise DatasetError("the edges protocol needs --edges (human edge maps)")
            dataset = load_edge_dataset(args.data, args.edges, max_images=args.max_images)
        else:
            whole = args.protocol in ("proposals", "instances")
            dataset = load_dataset(
                args.data,
                images=args.images,
                labels=args.labels,
                min_area=0 if whole else args.min_area,
                max_masks=None if whole else args.max_masks,
                max_images=args.max_images,
                seed=args.seed,
                keep_empty=whole,
            )
        if len(dataset) == 0:
            raise DatasetError(f"{args.data}: no images with a usable mask")
        if args.checkpoint is None:
            print("warning: no --checkpoint: the model has RANDOM weights", file=sys.stderr)
        from sam_jax.modeling.variants import config_from_json

        model, info = load_model(
            args.checkpoint,
            config_from_json(args.config_json) if args.config_json else args.model_type,
            args.train_config,
            tuple(args.train_config_override),
        )
        doc = evaluate(
            args.protocol,
            dataset,
            model,
            out=args.out,
            model_info=info,
            progress=not args.quiet,
            **_settings(args),
        )
    except (DatasetError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(
        json.dumps(
            {
                "protocol": doc["protocol"],
                "metrics": _headline(doc),
                "images_per_s": round(doc["timing"]["images_per_s"], 3),
                "out": args.out,
            }
        )
    )


def _headline(doc: dict) -> dict:
    m = doc["metrics"]
    if doc["protocol"] == "points":
        return {"miou": m["miou"], "miou_oracle_1": m["miou_oracle_1"], "noc": m["noc"]}
    if doc["protocol"] == "proposals":
        return {k: v for k, v in m.items() if k.startswith("AR")}
    return {k: v for k, v in m.items() if not isinstance(v, (list, dict))}


__all__ = ["PROTOCOLS", "evaluate", "load_model", "make_protocol", "add_parser", "run_cli"]
