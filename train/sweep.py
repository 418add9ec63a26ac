"""Scaling-ablation sweeps (paper section 7.6, Figure 13): define a grid, run it, read it.

A sweep is a config file (``configs/sweeps/<name>.py``) whose ``get_sweep()``
returns a :class:`Sweep`: the base training config (a config file plus dotted
overrides) and its cells, each a dict of dotted overrides with the axis values it
stands for. :func:`product` builds the cells of a product of axes; a sweep that
varies one axis at a time around a default (as Figure 13 does) is a sum of
products with single-valued axes.

Commands::

    python -m train.sweep run configs/sweeps/cpu_tiny.py --workdir DIR
    python -m train.sweep run configs/sweeps/paper_fig13.py --workdir DIR --print-commands
    python -m train.sweep eval configs/sweeps/paper_fig13.py --workdir DIR --cell NAME
    python -m train.sweep report DIR

``run`` trains the cells one after another, each as ``python -m train`` in its own
workdir ``DIR/<cell>`` (resolved ``config.json``, ``metrics.jsonl``, checkpoints,
``train.log``; compiled programs are shared through the persistent cache
``DIR/jax_cache``), then scores it on a fixed held-out set (:data:`SCORERS`; a scorer
is a function ``(config, workdir, sweep) -> dict of metrics``) into
``scores.json`` and writes the done marker ``done.json`` (atomically, last). A
second ``run`` skips the cells with a done marker and resumes the others from
their newest checkpoint. ``--print-commands`` prints, instead of running, one
multi-host training command per cell for a cluster scheduler or a TPU pod, then
the per-cell ``eval`` commands and the ``report``. ``report`` writes
``results.csv``, ``results.md`` and ``figure13.png`` (one panel per axis) into
``DIR``; cells that differ only in their seed become one row with the mean and
the standard deviation.
"""

from __future__ import annotations

import argparse
import ast
import csv
import dataclasses
import io
import itertools
import json
import math
import os
import re
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sam_jax import atomic_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DONE, SCORES, TIMING, CONFIG = "done.json", "scores.json", "timing.json", "config.json"
SEED_AXIS = "seed"


# ------------------------------------------------------------------ definition
@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid: ``axes`` (axis name -> value label, in axis order) and the
    dotted config ``overrides`` that realise it."""

    axes: dict[str, Any]
    overrides: dict[str, Any]
    levels: dict[str, tuple] = dataclasses.field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        """The workdir name, e.g. ``width-32_fraction-0.1`` (filesystem-safe)."""
        parts = [f"{k}-{v}" for k, v in self.axes.items()]
        return re.sub(r"[^A-Za-z0-9.+-]+", "_", "_".join(parts)) or "base"


@dataclasses.dataclass(frozen=True)
class Sweep:
    """``base``: a config file (path relative to the repository or a name under
    ``configs/``); ``overrides``: dotted overrides applied to it for every cell;
    ``cells``: the grid; ``seeds``: each cell runs once per seed (``train.seed`` and
    ``data.seed``); ``scorer``: a key of :data:`SCORERS`; ``eval``: the scorer's
    settings (the held-out set). The default scorer is the point protocol (mIoU at 1, 3
    and 5 clicks and the oracle); ``single_point`` is ``train.evaluate``'s mIoU."""

    base: str
    cells: list[Cell]
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    scorer: str = "points"
    eval: dict[str, Any] = dataclasses.field(default_factory=dict)

    def axis_levels(self) -> dict[str, list]:
        """Each axis' values in the order the sweep declares them (for tables and plots)."""
        out: dict[str, list] = {}
        for cell in self.cells:
            for axis, label in cell.axes.items():
                levels = list(cell.levels.get(axis, (label,)))
                have = out.setdefault(axis, [])
                if len(levels) > len(have):
                    out[axis] = levels + [x for x in have if x not in levels]
                else:
                    have += [x for x in levels if x not in have]
        if len(self.seeds) > 1:
            out[SEED_AXIS] = list(self.seeds)
        return out

    def expanded(self) -> list[Cell]:
        """The cells to run: each cell once per seed (a ``seed`` axis only if several);
        a cell listed twice with the same overrides runs once."""
        out, seen = [], {}
        for cell in self.cells:
            for seed in self.seeds:
                axes, ov = dict(cell.axes), dict(cell.overrides)
                if len(self.seeds) > 1:
                    axes[SEED_AXIS] = seed
                    ov.update({"train.seed": seed, "data.seed": seed})
                c = Cell(axes, ov, cell.levels)
                if c.name in seen:
                    if seen[c.name] != c.overrides:
                        raise ValueError(f"two different cells named {c.name!r}")
                    continue  # the same cell listed twice (e.g. the default of each axis)
                seen[c.name] = c.overrides
                out.append(c)
        return out


def product(**axes: Mapping[Any, Mapping[str, Any]] | tuple[str, Iterable]) -> list[Cell]:
    """The cells of the product of ``axes`` (in the given order; the last varies fastest).

    Each axis is either ``{label: {dotted key: value, ...}, ...}`` (named levels, e.g. a
    stage mixture) or ``(dotted key, values)`` (the value is its own label)::

        product(size={"vit_b": {"model.variant": "vit_b"}}, fraction=("data.fraction", [0.1, 1.0]))
    """
    levels = []
    for name, ax in axes.items():
        if isinstance(ax, tuple) and len(ax) == 2 and isinstance(ax[0], str):
            key, values = ax
            ax = {v: {key: v} for v in values}
        if not ax:
            raise ValueError(f"axis {name!r} has no value")
        levels.append([(name, label, dict(ov)) for label, ov in ax.items()])
    order = {lv[0][0]: tuple(label for _, label, _ in lv) for lv in levels}
    cells = []
    for combo in itertools.product(*levels):
        overrides: dict[str, Any] = {}
        for _, _, ov in combo:
            overrides.update(ov)
        cells.append(Cell({name: label for name, label, _ in combo}, overrides, order))
    return cells


def recipe(config_file: str, base: str) -> dict[str, Any]:
    """The dotted overrides that turn config file ``base`` into ``config_file`` (e.g. the
    ViT-B recipe on a ViT-H base: variant, lr, layer decay, drop path, steps, batch)."""
    from configs import load_config

    def flat(c, prefix=""):
        out = {}
        for k, v in c.items():
            if hasattr(v, "items"):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    a, b = (flat(load_config(os.path.join(REPO, f))) for f in (config_file, base))
    extra = sorted(set(a) ^ set(b))
    if extra:
        raise ValueError(f"{config_file} and {base} differ in their keys: {extra}")
    return {k: v for k, v in a.items() if v != b[k]}


def load_sweep(path: str) -> Sweep:
    """``get_sweep()`` of a sweep file (a path, or a name under ``configs/sweeps/``)."""
    if not os.path.exists(path):
        named = os.path.join(REPO, "configs", "sweeps", f"{path}.py")
        if os.sep in path or not os.path.exists(named):
            raise FileNotFoundError(f"sweep file not found: {path}")
        path = named
    import importlib.util

    spec = importlib.util.spec_from_file_location("_sam_jax_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sweep = module.get_sweep()
    if not isinstance(sweep, Sweep):
        raise TypeError(f"{path}: get_sweep() must return a train.sweep.Sweep, got {type(sweep)}")
    if sweep.scorer not in SCORERS:
        raise ValueError(f"{path}: unknown scorer {sweep.scorer!r} (one of {sorted(SCORERS)})")
    return sweep


def base_path(sweep: Sweep) -> str:
    """The base config file as written in commands (relative to the repository if inside)."""
    for cand in (
        sweep.base,
        os.path.join(REPO, sweep.base),
        os.path.join(REPO, "configs", f"{sweep.base}.py"),
    ):
        if os.path.exists(cand):
            full = os.path.abspath(cand)
            rel = os.path.relpath(full, REPO)
            return full if rel.startswith("..") else rel
    raise FileNotFoundError(f"base config not found: {sweep.base}")


def cell_overrides(sweep: Sweep, cell: Cell, workdir: str) -> dict[str, Any]:
    """Every override of ``cell`` (sweep's, then the cell's, then its workdir)."""
    return {**sweep.overrides, **cell.overrides, "train.workdir": os.path.join(workdir, cell.name)}


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """``--config.key=value`` arguments whose values read back as the same Python literals."""
    return [f"--config.{k}={_literal(v)}" for k, v in overrides.items()]


def _literal(v) -> str:
    """``repr(v)``, except a string that does not parse as a literal (a path) stays bare."""
    if isinstance(v, str):
        try:
            ast.literal_eval(v)
        except (ValueError, SyntaxError):
            return v
    return repr(v)


def resolve(sweep: Sweep, cell: Cell, workdir: str):
    """The cell's full training config (``ml_collections.ConfigDict``)."""
    from configs import load_config

    return load_config(
        os.path.join(REPO, base_path(sweep)),
        [a[len("--config.") :] for a in override_args(cell_overrides(sweep, cell, workdir))],
    )


# ------------------------------------------------------------------ files
def write_json(path: str, obj: Any) -> None:
    atomic_io.write_json(path, obj, indent=1, default=_jsonable)


def _jsonable(x):
    if hasattr(x, "to_dict"):
        return x.to_dict()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def read_json(path: str, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def latest_checkpoint(cell_dir: str) -> int:
    """The newest committed checkpoint step under ``<cell_dir>/checkpoints`` (0 if none)."""
    d = os.path.join(cell_dir, "checkpoints")
    steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
    return max(steps, default=0)


# ------------------------------------------------------------------ scoring
def single_point_scorer(config, workdir: str, sweep: Sweep) -> dict[str, float]:
    """Single-point mIoU of ``train.evaluate`` (one uniform foreground point per mask, the
    most confident of 3 masks) and its oracle, on the held-out set: ``config.data.eval_dir``
    if set, else ``eval["synthetic_batches"]`` synthetic batches of ``eval["batch_size"]``
    images (seeds 10**6 + i, disjoint from training's)."""
    from train.evaluate import eval_batches, restore_params, single_point_miou

    module, params, step = restore_params(config, workdir)
    batches = list(
        eval_batches(
            config,
            module.config.image_size,
            config.data.eval_dir,
            int(sweep.eval.get("synthetic_batches", 4)),
            int(sweep.eval.get("batch_size", 4)),
        )
    )
    res = single_point_miou(module, params, batches, min_cells=config.loss.min_target_cells)
    return {"miou_1pt": res["miou"], "num_masks": res["num_masks"], "step": step}


def synthetic_eval_dataset(image_size: int, num_images: int, masks_per_image: int):
    """The point protocol's held-out set without data: the synthetic images of
    ``train.evaluate`` (seeds 10**6 + i, disjoint from training's), masks at full
    resolution (those of at least 16 pixels), as a ``sam_jax.evaluation.EvalDataset``."""
    import numpy as np

    from data.synthetic_batch import make_image
    from sam_jax.evaluation.datasets import Annotation, EvalDataset, EvalImage

    images = []
    for i in range(num_images):
        img, masks = make_image(np.random.default_rng(10**6 + i), image_size, masks_per_image)
        keep = [m for m in masks if m.sum() >= 16]
        anns = []
        for j, m in enumerate(keep):
            ys, xs = np.nonzero(m)
            anns.append(
                Annotation(
                    id=i * 1000 + j,
                    area=float(m.sum()),
                    category_id=1,
                    segmentation=j,
                    bbox=[float(xs.min()), float(ys.min()), float(np.ptp(xs) + 1), float(np.ptp(ys) + 1)],
                )
            )
        pixels = img.astype(np.uint8)
        stack = np.stack(keep) if keep else np.zeros((0, image_size, image_size), bool)
        images.append(
            EvalImage(
                image_id=i,
                file_name=f"synthetic_{i}",
                height=image_size,
                width=image_size,
                annotations=anns,
                _loader=lambda _im, full, p=pixels, m=stack: (p, m if full else None),
            )
        )
    return EvalDataset(
        name="synthetic-heldout",
        kind="sa1b",
        images=images,
        total_masks=sum(len(im.annotations) for im in images),
    )


def points_scorer(config, workdir: str, sweep: Sweep) -> dict[str, float]:
    """The point protocol (paper 7.1, appendix D.1; ``sam_jax.evaluation``): mIoU after 1, 3
    and 5 clicks (centre first click, then corrections at the largest error) and the
    1-click oracle, on ``eval["data"]`` or ``data.eval_dir`` (an SA-1B folder or shards, at
    most ``eval["max_masks"]`` masks), else ``eval["images"]`` synthetic held-out images."""
    from sam_jax.evaluation import evaluate, load_dataset
    from sam_jax.sam_model import SamModel
    from train.evaluate import restore_params

    module, params, step = restore_params(config, workdir)
    data = sweep.eval.get("data") or config.data.eval_dir
    if data:
        ds = load_dataset(data, max_masks=sweep.eval.get("max_masks"))
    else:
        ds = synthetic_eval_dataset(
            module.config.image_size, int(sweep.eval.get("images", 16)), config.data.masks_per_image
        )
    doc = evaluate(
        "points",
        ds,
        SamModel(module, params),
        out=os.path.join(workdir, "eval_points"),
        progress=False,
        clicks=(1, 3, 5),
    )
    m = doc["metrics"]
    return {
        "miou_1": m["miou"]["1"],
        "miou_3": m["miou"]["3"],
        "miou_5": m["miou"]["5"],
        "miou_oracle": m["miou_oracle_1"],
        "num_masks": m["num_masks"],
        "step": step,
    }


# name -> (config, workdir, sweep) -> metrics
SCORERS: dict[str, Callable[..., dict[str, float]]] = {
    "points": points_scorer,
    "single_point": single_point_scorer,
}


# ------------------------------------------------------------------ running
def train_command(
    sweep: Sweep, cell: Cell, workdir: str, python: str = "python", multihost: bool = False
) -> list[str]:
    """``python -m train`` for one cell (with the multi-host flags as shell variables)."""
    cmd = [python, "-m", "train", "--config", base_path(sweep)]
    cmd += override_args(cell_overrides(sweep, cell, workdir))
    if multihost:
        cmd += [
            "--config.mesh.coordinator_address=$COORDINATOR",
            "--config.mesh.num_processes=$NUM_PROCESSES",
            "--config.mesh.process_id=$PROCESS_ID",
        ]
    return cmd


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def train_cell(sweep: Sweep, cell: Cell, workdir: str, config) -> dict:
    """Train one cell to ``train.num_steps`` in a subprocess (resuming from its newest
    checkpoint); append the segment (steps, wall and CPU seconds) to ``timing.json``."""
    cell_dir = os.path.join(workdir, cell.name)
    timing = read_json(os.path.join(cell_dir, TIMING), {"segments": []})
    start = latest_checkpoint(cell_dir)
    if start >= config.train.num_steps:
        return timing
    cmd = train_command(sweep, cell, workdir, python=sys.executable)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
    )
    # cells of one shape (fraction, seed and stage axes) and resumed cells compile once
    env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(workdir, "jax_cache"))
    t0, c0 = time.perf_counter(), _child_cpu()
    with open(os.path.join(cell_dir, "train.log"), "a") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    end = latest_checkpoint(cell_dir)
    timing["segments"].append(
        {
            "start_step": start,
            "end_step": end,
            "returncode": rc,
            "wall_s": time.perf_counter() - t0,
            "cpu_s": _child_cpu() - c0,
        }
    )
    write_json(os.path.join(cell_dir, TIMING), timing)
    if rc != 0 or end < config.train.num_steps:
        raise RuntimeError(
            f"cell {cell.name}: training stopped at step {end} of "
            f"{config.train.num_steps} (exit status {rc}; see {cell_dir}/train.log)"
        )
    return timing


def score_cell(sweep: Sweep, cell: Cell, workdir: str, config, scorer: str | None = None) -> dict:
    """Score a trained cell, write ``scores.json`` and then the done marker ``done.json``."""
    cell_dir = os.path.join(workdir, cell.name)
    name = scorer or sweep.scorer
    t0, c0 = time.perf_counter(), _self_cpu()
    metrics = SCORERS[name](config, cell_dir, sweep)
    ev = {"wall_s": time.perf_counter() - t0, "cpu_s": _self_cpu() - c0}
    write_json(os.path.join(cell_dir, SCORES), dict(scorer=name, metrics=metrics, **ev))
    timing = read_json(os.path.join(cell_dir, TIMING), {"segments": []})
    steps = config.train.num_steps
    index = next((i for i, c in enumerate(sweep.expanded()) if c.name == cell.name), -1)
    done = {
        "cell": cell.name,
        "index": index,
        "axes": cell.axes,
        "overrides": cell.overrides,
        "scorer": name,
        "metrics": metrics,
        "steps": steps,
        "images_seen": steps * config.data.global_batch_size,
        "train_wall_s": sum(s["wall_s"] for s in timing["segments"]),
        "train_cpu_s": sum(s["cpu_s"] for s in timing["segments"]),
        "eval_wall_s": ev["wall_s"],
        "eval_cpu_s": ev["cpu_s"],
        "segments": len(timing["segments"]),
    }
    write_json(os.path.join(cell_dir, DONE), done)
    return done


def prepare_cell(sweep: Sweep, cell: Cell, workdir: str):
    """Create the cell's workdir and its resolved ``config.json``; return the config."""
    config = resolve(sweep, cell, workdir)
    cell_dir = os.path.join(workdir, cell.name)
    os.makedirs(cell_dir, exist_ok=True)
    write_json(
        os.path.join(cell_dir, CONFIG),
        {
            "base": base_path(sweep),
            "axes": cell.axes,
            "overrides": cell_overrides(sweep, cell, workdir),
            "config": json.loads(config.to_json_best_effort()),
        },
    )
    return config


def write_sweep_json(sweep: Sweep, workdir: str) -> None:
    """``<workdir>/sweep.json``: the axes and their declared value order (read by the report)."""
    write_json(
        os.path.join(workdir, "sweep.json"),
        {
            "base": base_path(sweep),
            "axes": sweep.axis_levels(),
            "scorer": sweep.scorer,
            "cells": [c.name for c in sweep.expanded()],
        },
    )


def run_sweep(
    sweep: Sweep, workdir: str, only: Iterable[str] = (), scorer: str | None = None, progress: bool = True
) -> list[str]:
    """Run every cell not yet done, in sequence; returns the names of the cells that failed."""
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    write_sweep_json(sweep, workdir)
    cells = _select(sweep, only)
    failed = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cells), desc="sweep", unit="cell", dynamic_ncols=True)
    for cell in cells:
        cell_dir = os.path.join(workdir, cell.name)
        if os.path.exists(os.path.join(cell_dir, DONE)):
            _note(bar, f"{cell.name}: done, skipped")
        else:
            config = prepare_cell(sweep, cell, workdir)
            try:
                _note(bar, f"{cell.name}: training from step {latest_checkpoint(cell_dir)}")
                train_cell(sweep, cell, workdir, config)
                done = score_cell(sweep, cell, workdir, config, scorer)
                _note(bar, f"{cell.name}: {json.dumps(done['metrics'])}")
            except RuntimeError as e:
                _note(bar, f"{cell.name}: FAILED: {e}")
                failed.append(cell.name)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return failed


def _note(bar, text: str) -> None:
    if bar is None:
        print(text, flush=True)
    else:
        bar.write(text)


def _select(sweep: Sweep, only: Iterable[str]) -> list[Cell]:
    cells = sweep.expanded()
    only = list(only)
    if only:
        names = {c.name for c in cells}
        unknown = [o for o in only if o not in names]
        if unknown:
            raise ValueError(f"unknown cell(s) {unknown}; cells: {sorted(names)}")
        cells = [c for c in cells if c.name in only]
    return cells


def shell_join(args: list[str]) -> str:
    """A shell command line: ``$NAME`` in the multi-host flags is expanded by the shell
    (double quotes); other arguments are quoted literally, in double quotes where they
    hold single quotes (Python string literals) and nothing the shell would expand."""
    out = []
    for a in args:
        if re.search(r"=\$[A-Z_]+$", a) or ("'" in a and not re.search(r'["$`\\!]', a)):
            out.append(f'"{a}"')
        else:
            out.append(shlex.quote(a))
    return " ".join(out)


LAUNCHERS = ("generic", "tpu", "slurm")


def print_commands(sweep: Sweep, sweep_file: str, workdir: str, launcher: str = "generic", out=None) -> None:
    """One multi-host training command per cell, then the eval commands and the report.

    ``generic``: the lines carry the mesh flags with ``$COORDINATOR`` (host:port of process
    0), ``$NUM_PROCESSES`` and ``$PROCESS_ID``, set by the scheduler's job script on each
    host; ``tpu``/``slurm``: no mesh flags (``jax.distributed.initialize()`` reads them from
    the TPU pod / Slurm environment)."""
    out = out or sys.stdout
    workdir = os.path.abspath(workdir)
    cells = sweep.expanded()
    where = (
        "with COORDINATOR=host:port of process 0, NUM_PROCESSES and PROCESS_ID set"
        if launcher == "generic"
        else f"({launcher}: jax finds the processes)"
    )
    print(
        f"# sam-jax sweep, {len(cells)} cells: run each training line on every host of its job "
        f"{where}; then the eval lines (one host each) and the report.",
        file=out,
    )
    for cell in cells:
        print(shell_join(train_command(sweep, cell, workdir, multihost=launcher == "generic")), file=out)
    for cell in cells:
        print(
            shlex.join(
                ["python", "-m", "train.sweep", "eval", sweep_file, "--workdir", workdir, "--cell", cell.name]
            ),
            file=out,
        )
    print(shlex.join(["python", "-m", "train.sweep", "report", workdir]), file=out)


# ------------------------------------------------------------------ reporting
def collect(workdir: str) -> tuple[list[dict], list[str]]:
    """The done markers of ``workdir``'s cells (sorted by name) and the unfinished cells."""
    done, pending = [], []
    for name in sorted(os.listdir(workdir)):
        d = os.path.join(workdir, name)
        if not os.path.isfile(os.path.join(d, CONFIG)):
            continue
        marker = read_json(os.path.join(d, DONE))
        (done.append(marker) if marker else pending.append(name))
    done.sort(key=lambda d: (d.get("index", -1), d["cell"]))  # the sweep's order
    return done, pending


def _metric_keys(done: list[dict]) -> list[str]:
    keys = []
    for d in done:
        for k, v in d["metrics"].items():
            if k not in keys and k not in ("step", "num_masks") and isinstance(v, (int, float)):
                keys.append(k)
    return keys


def table_rows(done: list[dict]) -> tuple[list[str], list[dict]]:
    """Rows of the report: cells that differ only in their seed are one row (mean; the
    ``<metric>_std`` columns hold the standard deviation over seeds, ``seeds`` the count)."""
    axes = []
    for d in done:
        for a in d["axes"]:
            if a != SEED_AXIS and a not in axes:
                axes.append(a)
    metrics = _metric_keys(done)
    groups: dict[tuple, list[dict]] = {}
    for d in done:
        key = tuple(str(d["axes"].get(a, "")) for a in axes)
        groups.setdefault(key, []).append(d)
    multi = any(len(g) > 1 for g in groups.values())
    rows = []
    for key, g in groups.items():
        row = dict(zip(axes, key))
        row["seeds"] = len(g)
        for k in ("steps", "images_seen"):
            row[k] = g[0][k]
        row["train_wall_s"] = _mean([d["train_wall_s"] for d in g])
        row["train_cpu_s"] = _mean([d["train_cpu_s"] for d in g])
        row["eval_wall_s"] = _mean([d["eval_wall_s"] for d in g])
        for m in metrics:
            vals = [float(d["metrics"][m]) for d in g if m in d["metrics"]]
            row[m] = _mean(vals)
            if multi:
                row[f"{m}_std"] = _std(vals)
        rows.append(row)
    cols = axes + ["seeds", "steps", "images_seen", "train_wall_s", "train_cpu_s", "eval_wall_s"]
    for m in metrics:
        cols += [m] + ([f"{m}_std"] if multi else [])
    return cols, rows


def _mean(v):
    return sum(v) / len(v) if v else float("nan")


def _std(v):
    if len(v) < 2:
        return float("nan")
    m = _mean(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.4f}" if abs(v) < 1 else f"{v:.1f}"
    return str(v)


def write_report(workdir: str) -> dict[str, str]:
    """``results.csv``, ``results.md`` and ``figure13.png`` in ``workdir``; returns their paths."""
    done, pending = collect(workdir)
    if not done:
        raise ValueError(f"no finished cell under {workdir} (pending: {pending or 'none'})")
    cols, rows = table_rows(done)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in cols})
    paths = {
        "csv": os.path.join(workdir, "results.csv"),
        "md": os.path.join(workdir, "results.md"),
        "png": os.path.join(workdir, "figure13.png"),
    }
    atomic_io.write_text(paths["csv"], buf.getvalue())
    total_wall = sum(d["train_wall_s"] + d["eval_wall_s"] for d in done)
    total_cpu = sum(d["train_cpu_s"] + d["eval_cpu_s"] for d in done)
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(r.get(k, "")) for k in cols) + " |" for r in rows]
    md += [
        "",
        (
            f"{len(done)} cells finished, scorer `{done[0]['scorer']}`; total wall {total_wall:.0f} s, "
            f"CPU {total_cpu:.0f} s (training + evaluation)."
        ),
    ]
    if pending:
        md.append(f"Unfinished: {', '.join(pending)}.")
    atomic_io.write_text(paths["md"], "\n".join(md) + "\n")
    order = (read_json(os.path.join(workdir, "sweep.json")) or {}).get("axes", {})
    plot(
        rows, [c for c in cols if any(c in d["axes"] for d in done)], _metric_keys(done), paths["png"], order
    )
    return paths


def plot(
    rows: list[dict], axes: list[str], metrics: list[str], path: str, order: Mapping[str, list] | None = None
) -> None:
    """Figure 13's layout: one panel per axis, mIoU against the axis value; one line per
    combination of the other axes' values; error bars where there are several seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = next((m for m in ("miou_1", "miou_1pt", "miou") if m in metrics), metrics[0])
    varying = [a for a in axes if len({str(r[a]) for r in rows}) > 1] or axes[:1]
    fig, panels = plt.subplots(1, len(varying), figsize=(4.2 * len(varying), 3.6), squeeze=False)
    for ax, name in zip(panels[0], varying):
        others = [a for a in axes if a != name]
        lines: dict[tuple, list[dict]] = {}
        for r in rows:
            lines.setdefault(tuple(str(r[a]) for a in others), []).append(r)
        if any(len(rs) > 1 for rs in lines.values()):  # one-axis-at-a-time sweeps: the axis' own line
            lines = {k: rs for k, rs in lines.items() if len(rs) > 1}
        labels = _ordered(
            {str(r[name]) for rs in lines.values() for r in rs}, rows, name, (order or {}).get(name)
        )
        for key, rs in sorted(lines.items()):
            rs = sorted(rs, key=lambda r: labels.index(str(r[name])))
            x = [labels.index(str(r[name])) for r in rs]
            y = [r[metric] for r in rs]
            err = [r.get(f"{metric}_std", float("nan")) for r in rs]
            err = None if all(math.isnan(e) for e in err) else [0 if math.isnan(e) else e for e in err]
            lab = ", ".join(f"{a}={v}" for a, v in zip(others, key)) or None
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=lab)
        ax.set_xticks(range(len(labels)), labels, rotation=20 if max(map(len, labels)) > 6 else 0, fontsize=8)
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_io.write_bytes(path, buf.getvalue())


def _ordered(labels: set[str], rows: list[dict], name: str, declared: list | None = None) -> list[str]:
    """Axis values in the sweep's declared order, else numeric when they are numbers, else in
    first-seen order."""
    if declared and labels <= {str(x) for x in declared}:
        return [str(x) for x in declared if str(x) in labels]
    try:
        return sorted(labels, key=float)
    except ValueError:
        seen = []
        for r in rows:
            if str(r[name]) in labels and str(r[name]) not in seen:
                seen.append(str(r[name]))
        return seen


# ------------------------------------------------------------------ CLI
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.sweep", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train and score every cell not done yet")
    r.add_argument("sweep", help="configs/sweeps/<name>.py or a name")
    r.add_argument("--workdir", required=True)
    r.add_argument("--cell", action="append", default=[], help="only this cell (repeatable)")
    r.add_argument("--scorer", choices=sorted(SCORERS), default=None)
    r.add_argument(
        "--print-commands",
        action="store_true",
        help="print one multi-host launch command per cell instead of running",
    )
    r.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="generic",
        help="with --print-commands: generic (mesh flags from $COORDINATOR, "
        "$NUM_PROCESSES, $PROCESS_ID) or tpu/slurm (jax finds them)",
    )
    e = sub.add_parser("eval", help="score trained cells (after cluster training) and mark them done")
    e.add_argument("sweep")
    e.add_argument("--workdir", required=True)
    e.add_argument("--cell", action="append", default=[])
    e.add_argument("--scorer", choices=sorted(SCORERS), default=None)
    rep = sub.add_parser("report", help="results.csv, results.md and figure13.png of a sweep workdir")
    rep.add_argument("workdir")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "report":
            if not os.path.isdir(args.workdir):
                raise FileNotFoundError(f"no sweep workdir {args.workdir}")
            for path in write_report(args.workdir).values():
                print(path)
            return 0
        sweep = load_sweep(args.sweep)
        if args.command == "run" and args.print_commands:
            os.makedirs(args.workdir, exist_ok=True)
            write_sweep_json(sweep, os.path.abspath(args.workdir))
            for cell in sweep.expanded():
                prepare_cell(sweep, cell, args.workdir)
            print_commands(sweep, args.sweep, args.workdir, args.launcher)
            return 0
        if args.command == "run":
            failed = run_sweep(sweep, args.workdir, args.cell, args.scorer)
        else:
            failed = []
            for cell in _select(sweep, args.cell):
                config = resolve(sweep, cell, os.path.abspath(args.workdir))
                if latest_checkpoint(os.path.join(args.workdir, cell.name)) < config.train.num_steps:
                    failed.append(cell.name)
                    print(f"{cell.name}: not trained to step {config.train.num_steps}", file=sys.stderr)
                    continue
                print(
                    json.dumps(
                        score_cell(sweep, cell, os.path.abspath(args.workdir), config, args.scorer)["metrics"]
                    )
                )
    except (FileNotFoundError, ValueError, KeyError, TypeError) as err:
        p.exit(2, f"{p.prog}: error: {err.args[0] if err.args else err}\n")
    if failed:
        print(f"{len(failed)} cell(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from train.sweep import main as _main  # one Sweep class for this module and the sweep files

    sys.exit(_main())
