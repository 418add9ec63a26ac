"""The training loop: I/O, logging, checkpoints around the pure jitted train step.

Run::

    python -m train --config configs/tiny.py --config.train.num_steps=200 \
        --config.train.workdir=/tmp/run --config.data.synthetic=True

Overrides are ``--config.<dotted.key>=<python literal or string>`` (``-c`` for
``--config``). On start the newest readable checkpoint under
``<workdir>/checkpoints`` is restored (params, optimiser state, step = data
position, RNG); otherwise the state is initialised from scratch or from
``model.init_checkpoint`` (an official SAM ``.pth`` / our ``.npz``).

Every ``train.log_every`` steps: each loss term, mIoU after the first and last
pass, grad norm, lr, images/s and the data pipeline's skipped-sample counts go to
stdout and, if tensorboardX is installed, to TensorBoard event files in
``<workdir>/tb``, and as JSON lines (full precision) to ``<workdir>/metrics.jsonl``. A NaN/inf loss stops the run with a ``FloatingPointError``
before any non-finite state is saved. SIGTERM: save, then exit with status 0.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import logging
import os
import sys
import time
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from train import checkpointing, sharding
from train.train_step import Trainer, host_metrics

log = logging.getLogger("train")


# ---------------------------------------------------------------- config
def load_config(path: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
    """``get_config()`` of the Python file ``path`` with ``key.sub=value`` overrides applied."""
    spec = importlib.util.spec_from_file_location("_sam_train_config", path)
    if spec is None or not os.path.exists(path):
        raise FileNotFoundError(f"config file not found: {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    config = mod.get_config()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        if leaf not in node:
            raise KeyError(f"unknown config key {key!r}")
        old = node[leaf]
        if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(old, ml_collections.ConfigDict) and isinstance(value, dict):
            value = ml_collections.ConfigDict(value)
        node[leaf] = value
    return config


def parse_args(argv: list[str]) -> tuple[str, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", "-c", required=True, help="configs/<name>.py")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for r in rest:
        if not r.startswith("--config."):
            parser.error(f"unrecognised argument {r!r} (overrides are --config.key=value)")
        overrides.append(r[len("--config."):])
    return args.config, overrides


# ------------------------------------------------------------------ data
def data_iterator(config, start_step: int, image_size: int) -> tuple[Iterator[dict], Any]:
    """Per-process host batches from ``start_step`` on, and a ``stats()`` source (or None)."""
    per_process = config.data.global_batch_size // jax.process_count()
    if per_process * jax.process_count() != config.data.global_batch_size:
        raise ValueError(f"global batch {config.data.global_batch_size} does not divide over "
                         f"{jax.process_count()} processes")
    if config.data.synthetic:
        from train.synthetic_batch import make_batch

        def gen():
            step = start_step
            while True:
                seed = (config.data.seed * 1_000_003 + step) * 64 + jax.process_index()
                yield make_batch(seed, per_process, config.data.masks_per_image, image_size)
                step += 1
        return gen(), None
    if not config.data.train_dir:
        raise ValueError("set data.train_dir (SA-1B shards) or data.synthetic=True")
    from data.pipeline import Pipeline  # tensorflow only here

    pipe = Pipeline(shard_pattern(config.data.train_dir), batch_size=per_process,
                    seed=config.data.seed, model_size=image_size,
                    max_masks=config.data.masks_per_image,
                    max_area_frac=config.data.max_mask_area_frac, start_step=start_step,
                    process_index=jax.process_index(), process_count=jax.process_count())
    return iter(pipe), pipe


def shard_pattern(path: str) -> str:
    """A directory -> its ``*.tar`` shards; a glob or file path is used as given."""
    return os.path.join(path, "*.tar") if os.path.isdir(path) else path


# --------------------------------------------------------------- metrics
class MetricWriter:
    """stdout (+ TensorBoard event files when tensorboardX is importable), process 0 only."""

    def __init__(self, logdir: str | None, jsonl: str | None = None):
        self.tb = None
        self.active = jax.process_index() == 0
        self.jsonl = open(jsonl, "a") if jsonl and self.active else None
        if logdir and self.active:
            try:
                from tensorboardX import SummaryWriter
                self.tb = SummaryWriter(logdir)
            except ImportError:
                log.info("tensorboardX not installed: metrics go to stdout only")

    def write(self, step: int, metrics: dict[str, float], bar=None) -> None:
        if not self.active:
            return
        line = f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))
        (bar.write if bar is not None else print)(line)
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(dict(metrics, step=step)) + "\n")
            self.jsonl.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"train/{k}", v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.jsonl is not None:
            self.jsonl.close()


def _check_finite(step: int, metrics: dict[str, float]) -> None:
    if not np.isfinite(metrics["loss"]):
        raise FloatingPointError(
            f"non-finite loss {metrics['loss']} at step {step} (metrics: {metrics}); stopping "
            "without saving. Lower optim.lr, enable optim.grad_clip_norm, or use "
            "model.compute_dtype=float32 to investigate.")


# ------------------------------------------------------------------ loop
def run(config, *, max_steps: int | None = None, progress: bool = True) -> dict:
    """Train until ``train.num_steps`` (or ``max_steps`` more steps in this call).

    Returns a summary: ``start_step``, ``end_step``, ``losses`` (step -> loss of the
    steps run here), ``last_metrics``, ``preempted``, ``workdir``.
    """
    sharding.initialize_distributed(config.mesh)
    mesh = sharding.make_mesh(dict(config.mesh.shape))
    trainer = Trainer(config, mesh)
    workdir = os.path.abspath(config.train.workdir)
    os.makedirs(workdir, exist_ok=True)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), config.ckpt.keep,
                                      config.ckpt.async_save)
    state = ckpt.restore_latest(trainer.abstract_state)
    if state is None:
        params = None
        if config.model.init_checkpoint:
            params = trainer.load_init_params(config.model.init_checkpoint)
        state = trainer.init_state(config.train.seed, params)
        log.info("initialised a new state (%s)", config.model.init_checkpoint or "random")
    start = int(jax.device_get(state.step))
    end = config.train.num_steps if max_steps is None else min(config.train.num_steps,
                                                                 start + max_steps)
    image_size = trainer.module.config.image_size
    batches, pipe = data_iterator(config, start, image_size)
    writer = MetricWriter(os.path.join(workdir, "tb"), os.path.join(workdir, "metrics.jsonl"))
    flag = checkpointing.PreemptionFlag()
    summary = dict(start_step=start, end_step=start, losses={}, last_metrics={}, preempted=False,
                   workdir=workdir)
    bar = None
    if progress and jax.process_index() == 0:
        from tqdm import tqdm
        bar = tqdm(total=end - start, initial=0, desc="train", dynamic_ncols=True)
    pending = None  # (step, metrics on device): checked one step late to keep dispatch async
    t_log, imgs_since = time.perf_counter(), 0
    skipped = 0
    try:
        for step in range(start, end):
            host = next(batches)
            if "status" in host:
                skipped += int((np.asarray(host["status"]) != 0).sum())
            state, metrics = trainer.step(state, trainer.to_global(host))
            imgs_since += config.data.global_batch_size
            if pending is not None:
                m = host_metrics(pending[1])
                _check_finite(pending[0], m)
                summary["losses"][pending[0]] = m["loss"]
            pending = (step + 1, metrics)
            done = step + 1
            must_log = done % config.train.log_every == 0 or done == end
            must_save = done % config.ckpt.every == 0 or done == end
            if must_log or must_save:
                m = host_metrics(metrics)
                _check_finite(done, m)
                summary["losses"][done] = m["loss"]
                pending = None
                if must_log:
                    dt = time.perf_counter() - t_log
                    m["images_per_s"] = imgs_since / max(dt, 1e-9)
                    m["skipped_samples"] = float(skipped)
                    if pipe is not None:
                        for k, v in pipe.stats().items():
                            if k != "ok":
                                m[f"data/{k}"] = float(v)
                    writer.write(done, m, bar)
                    t_log, imgs_since = time.perf_counter(), 0
                summary["last_metrics"] = m
            if must_save:
                ckpt.save(done, state)
            summary["end_step"] = done
            if bar is not None:
                bar.update(1)
            if checkpointing.any_process_preempted(flag):
                if pending is not None:
                    m = host_metrics(pending[1])
                    _check_finite(pending[0], m)
                    summary["losses"][pending[0]] = m["loss"]
                if not must_save:
                    ckpt.save(done, state)
                ckpt.wait()
                summary["preempted"] = True
                print(f"preempted (signal {flag.signum}): saved step {done} in {ckpt.directory}",
                      flush=True)
                break
        if pending is not None:
            m = host_metrics(pending[1])
            _check_finite(pending[0], m)
            summary["losses"][pending[0]] = m["loss"]
    finally:
        flag.close()
        if bar is not None:
            bar.close()
        writer.close()
        ckpt.close()
    summary["state"] = state
    return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    path, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    config = load_config(path, overrides)
    summary = run(config)
    out = {k: v for k, v in summary.items() if k not in ("state", "losses")}
    print(json.dumps(out, default=float), flush=True)
    return 0
