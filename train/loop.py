"""The training loop: I/O, logging, checkpoints around the pure jitted train step.

Run::

    python -m train --config configs/tiny.py --config.train.num_steps=200 \
        --config.train.workdir=/tmp/run --config.data.synthetic=True

Overrides are ``--config.<dotted.key>=<python literal or string>`` (``-c`` for
``--config``; read by :func:`configs.parse_config_args`, as in every tool). On
start the newest readable checkpoint under ``<workdir>/checkpoints`` is restored
(params, optimiser state, step = data position, RNG); otherwise the state is initialised from scratch or from
``model.init_checkpoint`` (an official SAM ``.pth`` / our ``.npz``).

Every ``train.log_every`` steps: each loss term, mIoU after the first and last
pass, grad norm, lr, images/s, the data pipeline's skipped-sample counts and, when
``data.train_dir`` is a mixture of sources, ``source_count/<name>`` (samples drawn from
each source since step 0, all processes) go to
stdout and, if tensorboardX is installed, to TensorBoard event files in
``<workdir>/tb``, and as JSON lines (full precision) to ``<workdir>/metrics.jsonl``.
A NaN/inf loss stops the run with a ``FloatingPointError`` before any non-finite
state is saved. SIGTERM: save, then exit with status 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from configs import parse_config_args, validate_config
from sam_jax.checkpoint import CheckpointMismatchError, CorruptCheckpointError
from sam_jax.host_memory import keep_freed_memory
from train import checkpointing, sharding
from train.train_step import Trainer, host_metrics

log = logging.getLogger("train")


# ------------------------------------------------------------------ data
def synthetic_seed(seed: int, step: int, process_index: int) -> int:
    """The numpy seed of one process's synthetic batch at ``step`` (distinct for every
    step and process: ``fold_in`` of both into the key of ``seed``)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), step), process_index)
    hi, lo = (int(v) for v in np.asarray(jax.random.key_data(key)))
    return (hi << 32) | lo


def batch_target_size(config, default: int | None) -> int | None:
    """Side of the batches' mask targets: ``data.target_size``, else ``default``."""
    return config.data.get("target_size", 0) or default


def data_iterator(
    config, start_step: int, image_size: int, target_size: int | None = None
) -> tuple[Iterator[dict], Any]:
    """Per-process host batches from ``start_step`` on, and a ``stats()`` source (or None).
    Mask targets are ``data.target_size`` square, else ``target_size`` (the model's low-res
    mask size), else ``image_size / 4``."""
    target_size = batch_target_size(config, target_size)
    per_process = config.data.global_batch_size // jax.process_count()
    if per_process * jax.process_count() != config.data.global_batch_size:
        raise ValueError(
            f"global batch {config.data.global_batch_size} does not divide over "
            f"{jax.process_count()} processes"
        )
    fraction = config.data.get("fraction", 1.0)
    if config.data.synthetic and config.data.get("synthetic_images", 0) > 0:
        from data.subsets import synthetic_corpus_batches

        return synthetic_corpus_batches(
            config.data.synthetic_images,
            fraction,
            config.data.seed,
            per_process,
            config.data.masks_per_image,
            image_size,
            start_step,
            jax.process_index(),
            jax.process_count(),
            target_size,
        ), None
    if config.data.synthetic:
        if fraction < 1.0:
            raise ValueError(
                "data.fraction needs a finite corpus: set data.synthetic_images (or train on SA-1B shards)"
            )
        from data.synthetic_batch import make_batch

        def gen():
            step = start_step
            while True:
                seed = synthetic_seed(config.data.seed, step, jax.process_index())
                yield make_batch(
                    seed,
                    per_process,
                    config.data.masks_per_image,
                    image_size,
                    target_size=target_size,
                )
                step += 1

        return gen(), None
    if not config.data.train_dir:
        raise ValueError("set data.train_dir (SA-1B shards or a mixture of sources) or data.synthetic=True")
    from data.pipeline import Pipeline  # tensorflow only here
    from data.subsets import is_mixture, mixture_sources

    shards = config.data.train_dir
    if is_mixture(shards):
        shards = [(shard_pattern(s.pattern), s.weight, s.name) for s in mixture_sources(shards)]
    else:
        shards = shard_pattern(shards)
    pipe = Pipeline(
        shards,
        batch_size=per_process,
        fraction=fraction,
        seed=config.data.seed,
        model_size=image_size,
        max_masks=config.data.masks_per_image,
        target_size=target_size,
        max_area_frac=config.data.max_mask_area_frac,
        start_step=start_step,
        drop_bad=config.data.get("drop_bad", False),
        cache_mb=config.data.get("cache_mb", 0),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
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


class Tracker:
    """Per-step bookkeeping of a run: metrics, NaN check, logging, progress bar, summary.

    A step's metrics are read one step late (after the next step is dispatched), so
    the host never waits for the device, except on log and save steps, which are read
    at once: a non-finite loss stops the run before its state is saved.
    """

    def __init__(self, config, workdir: str, pipe, start: int, end: int, progress: bool):
        self.config, self.pipe, self.end = config, pipe, end
        # Draws of each source of a mixture by this process (padding slots excluded).
        self.source_counts = (
            np.array(pipe.start_source_counts) if pipe is not None and pipe.is_mixture else None
        )
        self.writer = MetricWriter(os.path.join(workdir, "tb"), os.path.join(workdir, "metrics.jsonl"))
        self.bar = None
        if progress and jax.process_index() == 0:
            from tqdm import tqdm

            self.bar = tqdm(total=end - start, initial=0, desc="train", dynamic_ncols=True)
        self.summary = dict(
            start_step=start, end_step=start, losses={}, last_metrics={}, preempted=False, workdir=workdir
        )
        self.pending = None  # (step, metrics on device)
        self.t_log, self.images, self.skipped = time.perf_counter(), 0, 0

    def read(self, step: int, metrics) -> dict[str, float]:
        """Device metrics of ``step`` -> host floats; the loss must be finite."""
        m = host_metrics(metrics)
        if not np.isfinite(m["loss"]):
            raise FloatingPointError(
                f"non-finite loss {m['loss']} at step {step} (metrics: {m}); stopping "
                "without saving. Lower optim.lr, enable optim.grad_clip_norm, or use "
                "model.compute_dtype=float32 to investigate."
            )
        self.summary["losses"][step] = m["loss"]
        return m

    def flush(self) -> None:
        """Read the step whose metrics are still pending."""
        if self.pending is not None:
            self.read(*self.pending)
            self.pending = None

    def after_step(self, done: int, host: dict, metrics, must_save: bool) -> None:
        """Account step ``done`` (just dispatched); log it on log steps."""
        if "status" in host:
            self.skipped += int((np.asarray(host["status"]) != 0).sum())
        if self.source_counts is not None:
            src = np.asarray(host["source"])
            self.source_counts += np.bincount(src[src >= 0], minlength=len(self.source_counts))
        self.images += self.config.data.global_batch_size
        self.flush()
        must_log = done % self.config.train.log_every == 0 or done == self.end
        if must_log or must_save:
            m = self.read(done, metrics)
            if must_log:
                self._log(done, m)
            self.summary["last_metrics"] = m
        else:
            self.pending = (done, metrics)
        self.summary["end_step"] = done
        if self.bar is not None:
            self.bar.update(1)

    def _log(self, step: int, m: dict[str, float]) -> None:
        m["images_per_s"] = self.images / max(time.perf_counter() - self.t_log, 1e-9)
        m["skipped_samples"] = float(self.skipped)
        if self.pipe is not None:
            m.update({f"data/{k}": float(v) for k, v in self.pipe.stats().items() if k != "ok"})
        if self.source_counts is not None:
            counts = self.source_counts
            if jax.process_count() > 1:  # every process logs on the same steps
                from jax.experimental import multihost_utils

                counts = np.asarray(multihost_utils.process_allgather(counts)).sum(0)
            m.update({f"source_count/{n}": float(c) for n, c in zip(self.pipe.source_names, counts)})
        self.writer.write(step, m, self.bar)
        self.t_log, self.images = time.perf_counter(), 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.writer.close()


# ------------------------------------------------------------------ loop
def restore_or_init(config, trainer: Trainer, ckpt: checkpointing.Checkpointer):
    """The newest readable checkpoint, else a new state (random or ``model.init_checkpoint``)."""
    state = ckpt.restore_latest(trainer.abstract_state)
    if state is not None:
        return state
    params = None
    if config.model.init_checkpoint:
        params = trainer.load_init_params(config.model.init_checkpoint)
    log.info("initialised a new state (%s)", config.model.init_checkpoint or "random")
    return trainer.init_state(config.train.seed, params)


def checkpoint_dir(config) -> str:
    """Where a run of ``config`` keeps its checkpoints: ``<train.workdir>/checkpoints``."""
    return os.path.join(os.path.abspath(config.train.workdir), "checkpoints")


def make_trainer(config, precompile: bool = False) -> Trainer:
    """The :class:`Trainer` of a run of ``config`` (validated; the distributed runtime
    started). With ``precompile`` its step, and the random initialisation of a run that
    has no checkpoint yet, are compiled here (:meth:`Trainer.precompile`), so that a
    caller can do it beside other work, such as writing the data, and pass the trainer
    to :func:`run`."""
    validate_config(config)
    keep_freed_memory()  # XLA:CPU steps would otherwise fault their buffers in anew
    sharding.initialize_distributed(config.mesh)
    trainer = Trainer(config, sharding.make_mesh(dict(config.mesh.shape)))
    if precompile:
        target = batch_target_size(config, trainer.module.config.low_res_size)
        fresh = not os.path.isdir(checkpoint_dir(config))
        trainer.precompile(target, init=fresh and not config.model.init_checkpoint)
    return trainer


def run(
    config, *, max_steps: int | None = None, progress: bool = True, trainer: Trainer | None = None
) -> dict:
    """Train until ``train.num_steps`` (or ``max_steps`` more steps in this call).
    ``trainer``: :func:`make_trainer`'s for this config (default: made here).

    Returns a summary: ``start_step``, ``end_step``, ``losses`` (step -> loss of the
    steps run here), ``last_metrics``, ``preempted``, ``workdir``, ``state``.
    """
    trainer = make_trainer(config) if trainer is None else trainer
    workdir = os.path.abspath(config.train.workdir)
    os.makedirs(workdir, exist_ok=True)
    ckpt = checkpointing.Checkpointer(checkpoint_dir(config), config.ckpt.keep, config.ckpt.async_save)
    state = restore_or_init(config, trainer, ckpt)
    start = int(jax.device_get(state.step))
    end = config.train.num_steps
    end = end if max_steps is None else min(end, start + max_steps)
    sam = trainer.module.config
    batches, pipe = data_iterator(config, start, sam.image_size, sam.low_res_size)
    tracker = Tracker(config, workdir, pipe, start, end, progress)
    flag = checkpointing.PreemptionFlag()
    try:
        for step in range(start, end):
            host = next(batches)
            state, metrics = trainer.step(state, trainer.to_global(host))
            done = step + 1
            must_save = done % config.ckpt.every == 0 or done == end
            tracker.after_step(done, host, metrics, must_save)
            if must_save:
                ckpt.save(done, state)
            if checkpointing.any_process_preempted(flag):
                tracker.flush()
                if not must_save:
                    ckpt.save(done, state)
                ckpt.wait()
                tracker.summary["preempted"] = True
                print(f"preempted (signal {flag.signum}): saved step {done} in {ckpt.directory}", flush=True)
                break
        tracker.flush()
    finally:
        flag.close()
        tracker.close()
        ckpt.close()
    return dict(tracker.summary, state=state)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n\n")[0])
    _, config = parse_config_args(parser, sys.argv[1:] if argv is None else argv)
    try:
        summary = run(config)
    except (CheckpointMismatchError, CorruptCheckpointError) as e:  # a changed model, a bad file
        raise SystemExit(f"error: {e}") from None
    out = {k: v for k, v in summary.items() if k not in ("state", "losses")}
    print(json.dumps(out, default=float), flush=True)
    return 0
