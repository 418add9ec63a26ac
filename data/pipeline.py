"""The SA-1B training input pipeline (tf.data for threading, batching, prefetch).

Usage::

    from data.pipeline import Pipeline
    pipe = Pipeline("gs://bucket/sa1b/sa_*.tar", batch_size=8, seed=0,
                    start_step=restored_step)
    for batch in pipe:            # infinite by default (num_epochs=None)
        ...
        pipe.stats()              # {"ok": .., "corrupt_jpeg": .., ...}

Batches are dicts of numpy arrays in the format of :mod:`data.batch`
(S = model_size, R = target_size, K = max_masks, B = batch_size), plus four
fields of the pipeline's own::

    status       (B,)         int32    data.status.Status (0 = OK)
    slot         (B,)         int64    position of the sample in this
                                       process's stream
    epoch        (B,)         int64    epoch of the sample (of its source's
                                       stream in a mixture)
    source       (B,)         int32    index of the sample's source in a
                                       mixture (0 for a single source)

With a finite ``num_epochs`` every record is delivered: the last batch is
filled up to ``B`` with padding slots (``status = Status.PADDING`` (-1),
``mask_valid`` all False, ``image_id = slot = epoch = source = -1``, zero arrays), so
an evaluation sees every held-out image even when there are fewer than ``B``.

Geometry and target conventions are documented in ``data.preprocess``.

Order (deterministic from ``seed``; a pure function of the shard list, the
seed and the process index):

1. the sorted shard list is split across processes: process ``p`` of ``P``
   owns shards ``p, p+P, p+2P, ...`` (every epoch);
2. each epoch ``e`` shuffles the process's shards with ``(seed, e, p)``;
3. ``cycle_length`` shards at a time are read round-robin;
4. the resulting record stream is shuffled in blocks of ``shuffle_block``
   records with ``(seed, e, p, block)``. Blocks hold only record *locations*
   (:class:`data.sa1b.RecordRef`), never data, so large blocks are cheap;
5. records are numbered with a global *slot* counter over all epochs (epochs
   follow each other without a gap; a batch can straddle two epochs).

A *mixture* ``[(glob, weight), ...]`` (:func:`data.subsets.mixture_sources`) runs
steps 1-4 for each source on its own (its shards split over the processes, its own
epochs), and slot ``t`` of the mixed stream takes the next record of source
:func:`data.subsets.mixture_choices` ``(t)``: drawn with probability
``weight / sum(weights)`` from ``(seed, process, t)`` alone, so where each source's
stream stands at any slot is computed without reading data and ``start_step``
resumes a mixture exactly too (:func:`mixture_stream`). Unlike tf.data's
``sample_from_datasets``, whose seeded choice can only be resumed by replaying it
with the data, the choice stream is a pure function of the slot. A mixture is an
endless stream (``num_epochs=None``).

Bad records and resumption. Each record occupies one slot whether or not it
is usable; with the default ``drop_bad=False`` a bad record (corrupt JPEG,
truncated member, bad JSON, RLE/image size mismatch, no usable mask, ...)
becomes an all-invalid slot (``status != 0``, ``mask_valid`` all False,
``image_id = -1``) rather than being removed. Batch ``s`` is therefore always
slots ``[s*B, (s+1)*B)``, so ``start_step=s`` resumes *exactly* where an
uninterrupted run would be, and skipping costs only listing record locations
(tar headers; no image or JSON is read or decoded). Bad data is rare in SA-1B,
so the wasted slots are negligible; the loss must ignore invalid masks anyway.

With ``drop_bad=True`` bad records are filtered out before batching (all
slots valid); ``start_step`` then still resumes exactly, but by running the
skipped steps through the decoder (slow for large steps). An endless stream of one
source none of whose records is usable would never fill a batch: after one pass
over it iterating raises a ``ValueError`` with the counts of what was wrong.

Decoded cache. With ``cache_mb`` > 0 the deterministic part of each record's
preprocessing (``data.preprocess.decode_record``: JSON, JPEG decode and resize, RLE
runs, area filter) is kept in memory, up to that many MiB (records seen after it is
full are decoded every time), keyed by a digest of the record's bytes; later epochs
only draw their masks, points and targets (``draw_sample``), so the batches are
identical with and without it. For corpora that fit in memory many times over an
epoch (small fine-tuning sets, the demo): at 128 px it saves about two thirds of a
record's CPU.

Counters: ``stats()`` counts samples by status as they are processed by the
map (which runs ahead of the consumer by the prefetch depth); the per-batch
``status`` field gives exact per-batch accounting.

TensorFlow is imported only when a pipeline is built, and GPUs are hidden
from it (``tf.config.set_visible_devices([], "GPU")``).
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import threading
import weakref
from collections.abc import Iterator, Sequence

import numpy as np

from data import sa1b
from data.batch import FIELDS
from data.preprocess import PreprocessConfig, decode_record, draw_sample, empty_sample
from data.status import COUNTER_NAMES, Status
from data.subsets import (
    CHOICE_BLOCK,
    in_fraction,
    is_mixture,
    mixture_choices,
    mixture_counts,
    mixture_sources,
    record_image_id,
)

__all__ = ["Pipeline", "record_stream", "mixture_stream", "default_process"]

BATCH_KEYS = tuple(FIELDS)


def default_process() -> tuple[int, int]:
    """``(jax.process_index(), jax.process_count())`` if jax is importable, else (0, 1)."""
    try:
        import jax
    except ImportError:
        return 0, 1
    return int(jax.process_index()), int(jax.process_count())


def _import_tf():
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except (RuntimeError, ValueError):
        pass  # already initialised; TF-CPU has no GPU anyway
    return tf


def _round_robin(iters: list[Iterator[sa1b.RecordRef]]) -> Iterator[sa1b.RecordRef]:
    active = list(iters)
    while active:
        nxt = []
        for it in active:
            try:
                yield next(it)
            except StopIteration:
                continue
            nxt.append(it)
        active = nxt


def record_stream(
    shards: Sequence[str],
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
    shuffle_block: int = 4096,
    cycle_length: int = 4,
    num_epochs: int | None = None,
    start_slot: int = 0,
    kind: str | None = None,
    fraction: float = 1.0,
) -> Iterator[tuple[int, int, sa1b.RecordRef]]:
    """The deterministic record order: yields ``(slot, epoch, ref)`` from ``start_slot``.

    Pure Python, no data read: refs are listed from shard headers only.
    See the module docstring for the order. ``fraction < 1`` keeps only the images of
    that subset (by image id, :func:`data.subsets.in_fraction`) before slots are counted.
    """
    shards = sorted(shards)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    mine = shards[process_index::process_count]
    if not mine:
        raise ValueError(
            f"process {process_index} of {process_count} gets no shard: only {len(shards)} shards"
        )
    slot = 0
    epoch = 0
    while num_epochs is None or epoch < num_epochs:
        order = (
            np.random.default_rng([seed, epoch, process_index, 1]).permutation(len(mine))
            if shuffle
            else np.arange(len(mine))
        )
        files = [mine[i] for i in order]
        n_epoch = 0
        block_idx = 0
        for g in range(0, len(files), cycle_length):
            stream = _round_robin([sa1b.iter_refs(f, kind) for f in files[g : g + cycle_length]])
            while True:
                block = []
                for ref in stream:
                    if fraction < 1.0 and not in_fraction(record_image_id(ref.key), fraction):
                        continue
                    block.append(ref)
                    if len(block) == shuffle_block:
                        break
                if not block:
                    break
                if shuffle:
                    perm = np.random.default_rng([seed, epoch, process_index, 2, g, block_idx]).permutation(
                        len(block)
                    )
                    block = [block[i] for i in perm]
                block_idx += 1
                for ref in block:
                    if slot >= start_slot:
                        yield slot, epoch, ref
                    slot += 1
                    n_epoch += 1
        if n_epoch == 0:
            raise ValueError(f"shards of process {process_index} hold no record: {mine[:3]}...")
        epoch += 1


def mixture_stream(
    source_shards: Sequence[Sequence[str]],
    weights: Sequence[float],
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
    shuffle_block: int = 4096,
    cycle_length: int = 4,
    start_slot: int = 0,
    kind: str | None = None,
    fraction: float = 1.0,
) -> Iterator[tuple[int, int, int, sa1b.RecordRef]]:
    """The endless mixed record order: yields ``(slot, epoch, source, ref)`` from ``start_slot``.

    ``source_shards[i]`` are the shards of source ``i``, read as :func:`record_stream`
    reads a single source (``epoch`` is that source's); slot ``t`` takes the next record
    of source :func:`data.subsets.mixture_choices` ``(t)``. Pure Python, no data read.
    """
    if len(source_shards) != len(weights) or not source_shards:
        raise ValueError(f"{len(source_shards)} sources for {len(weights)} weights")
    offsets = mixture_counts(weights, seed, process_index, start_slot)
    streams = [
        record_stream(
            shards,
            seed,
            process_index,
            process_count,
            shuffle,
            shuffle_block,
            cycle_length,
            None,
            int(offset),
            kind,
            fraction,
        )
        for shards, offset in zip(source_shards, offsets)
    ]
    slot = start_slot
    while True:
        stop = (slot // CHOICE_BLOCK + 1) * CHOICE_BLOCK
        for source in mixture_choices(weights, seed, process_index, slot, stop).tolist():
            _, epoch, ref = next(streams[source])
            yield slot, epoch, source, ref
            slot += 1


# Values of the padding slots of a finite stream's last batch (other keys: zeros).
_PAD_VALUES = {
    "mask_valid": False,
    "image_id": -1,
    "status": int(Status.PADDING),
    "slot": -1,
    "epoch": -1,
    "source": -1,
}


# Columns of the record stream (:meth:`Pipeline._records`): slot, epoch, source, status,
# jpeg, payload, payload_kind (bytes as numpy objects).
_RECORD_COLUMNS = (np.int64, np.int64, np.int32, np.int32, object, object, np.int32)


def _columns(records: list[tuple]) -> tuple[np.ndarray, ...]:
    """Records as :data:`_RECORD_COLUMNS`, one array per column."""
    return tuple(np.array(c, d) for c, d in zip(zip(*records), _RECORD_COLUMNS))


def _chunk_signature(tf) -> tuple:
    """``from_generator``'s signature of :func:`_columns`' chunks."""
    return tuple(
        tf.TensorSpec((None,), tf.string if d is object else tf.as_dtype(d)) for d in _RECORD_COLUMNS
    )


def _full_batch(tf, batch_size: int, batch: dict) -> dict:
    """A batch of an endless stream, its size made static."""
    return {k: tf.ensure_shape(t, [batch_size] + t.shape[1:].as_list()) for k, t in batch.items()}


def _pad_batch(tf, batch_size: int, batch: dict) -> dict:
    """Fill a (last, short) batch up to ``batch_size`` slots with padding (see the module doc)."""
    out = {}
    for k, t in batch.items():
        n = batch_size - tf.shape(t)[0]
        fill = tf.fill(tf.concat([[n], tf.shape(t)[1:]], 0), tf.constant(_PAD_VALUES.get(k, 0), t.dtype))
        out[k] = tf.concat([t, fill], 0)
        out[k].set_shape([batch_size] + t.shape[1:].as_list())
    return out


class Pipeline:
    """Iterable of SA-1B training batches (see the module docstring for the contract).

    Args:
      shards: glob pattern(s) or list of shard paths (tar, folders, TFDS tfrecords), or a
        mixture ``[(glob, weight), ...]`` / ``[(glob, weight, name), ...]`` (each sample
        drawn from a source with probability ``weight / sum(weights)``; see the module doc).
      batch_size: B (per process).
      seed: seed of the order and of the per-sample draws.
      model_size: S (1024 for SAM; 64/128 for tiny test models).
      target_size: R (default S // 4).
      max_masks: K.
      max_area_frac: masks covering more than this are dropped (0.9).
      start_step: first batch to produce (resumption; see module docstring).
      num_epochs: None = repeat forever.
      process_index, process_count: default to jax's, or (0, 1) without jax.
      shuffle: shuffle shards and records (off = stored order).
      shuffle_block: records per shuffle block.
      cycle_length: shards read round-robin at a time.
      drop_bad: remove bad records instead of leaving invalid slots.
      num_parallel_calls: map parallelism (None = AUTOTUNE).
      prefetch: batches to prefetch (None = AUTOTUNE).
      jpeg_draft: decode JPEGs at reduced DCT scale when possible.
      kind: force the shard kind ("tar", "folder", "tfds").
      fraction: train on this fraction of the images, chosen by image id (the same
        subset for every seed and process; nested across fractions).
      cache_mb: keep up to this many MiB of decoded records for later epochs (0 = off;
        see the module doc).
    Raises:
      FileNotFoundError: a pattern matches nothing / a path is unreadable.
      ValueError: bad arguments.
    """

    def __init__(
        self,
        shards: str | Sequence[str],
        batch_size: int,
        seed: int = 0,
        model_size: int = 1024,
        target_size: int | None = None,
        max_masks: int = 64,
        max_area_frac: float = 0.9,
        start_step: int = 0,
        num_epochs: int | None = None,
        process_index: int | None = None,
        process_count: int | None = None,
        shuffle: bool = True,
        shuffle_block: int = 4096,
        cycle_length: int = 4,
        drop_bad: bool = False,
        num_parallel_calls: int | None = None,
        prefetch: int | None = None,
        jpeg_draft: bool = True,
        kind: str | None = None,
        fraction: float = 1.0,
        cache_mb: float = 0.0,
    ):
        self.is_mixture = is_mixture(shards)
        if self.is_mixture:
            sources = mixture_sources(shards)
            self.source_names = tuple(s.name for s in sources)
            self.weights = tuple(s.weight for s in sources)
            self.source_shards = [sa1b.resolve_shards(s.pattern) for s in sources]
            if num_epochs is not None:
                raise ValueError("a mixture of sources is an endless stream: num_epochs must be None")
        else:
            self.source_names, self.weights = ("all",), (1.0,)
            self.source_shards = [sa1b.resolve_shards(shards)]
        self.shards = sorted(s for shards_ in self.source_shards for s in shards_)
        in_fraction(0, fraction)  # validates it
        self.fraction = float(fraction)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if start_step < 0:
            raise ValueError(f"start_step must be >= 0, got {start_step}")
        if process_index is None or process_count is None:
            pi, pc = default_process()
            process_index = pi if process_index is None else process_index
            process_count = pc if process_count is None else process_count
        self.process_index, self.process_count = int(process_index), int(process_count)
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index {process_index} not in [0, {process_count})")
        for name, shards_ in zip(self.source_names, self.source_shards):
            if len(shards_) < self.process_count:
                what = f" of source {name!r}" if self.is_mixture else ""
                raise ValueError(
                    f"{len(shards_)} shards{what} for {self.process_count} processes: each process needs one"
                )
        self.batch_size = batch_size
        self.seed = seed
        self.start_step = start_step
        self.num_epochs = num_epochs
        self.shuffle = shuffle
        self.shuffle_block = shuffle_block
        self.cycle_length = cycle_length
        self.drop_bad = drop_bad
        self.num_parallel_calls = num_parallel_calls
        self.prefetch = prefetch
        self.kind = kind
        self.cfg = PreprocessConfig(
            model_size=model_size,
            target_size=target_size,
            max_masks=max_masks,
            max_area_frac=max_area_frac,
            jpeg_draft=jpeg_draft,
            seed=seed,
        )
        self._lock = threading.Lock()
        self._counts = {name: 0 for name in COUNTER_NAMES}
        if cache_mb < 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self._cache_budget = int(cache_mb * 2**20)
        self._cache: dict[bytes, tuple] = {}
        self._cache_info = {"records": 0, "bytes": 0, "hits": 0}
        self._decoding: dict[bytes, threading.Event] = {}  # keys being decoded, not yet cached
        self._fatal: Exception | None = None
        # Draws of each source before ``start_step`` (this process); with drop_bad the skipped
        # steps are decoded again, so they are not known in advance and count from the restart.
        skipped = 0 if drop_bad else start_step * batch_size
        self.start_source_counts = (
            mixture_counts(self.weights, seed, self.process_index, skipped)
            if self.is_mixture
            else np.array([skipped], np.int64)
        )

    # ----------------------------------------------------------------- stats
    def stats(self) -> dict[str, int]:
        """Counters by status name (``ok``, ``corrupt_jpeg``, ``truncated_member``,
        ``bad_json``, ``rle_size_mismatch``, ``no_usable_mask``, ``bad_rle``,
        ``unpaired_member``) of the samples processed so far."""
        with self._lock:
            return dict(self._counts)

    def cache_info(self) -> dict[str, int]:
        """The decoded cache: ``records`` and ``bytes`` kept, ``hits`` (records not decoded again)."""
        with self._lock:
            return dict(self._cache_info)

    # ------------------------------------------------------------ generators
    def _stream(self, start_slot: int) -> Iterator[tuple[int, int, int, sa1b.RecordRef]]:
        """``(slot, epoch, source, ref)`` from ``start_slot``: the mixed or the single order."""
        common = (self.seed, self.process_index, self.process_count, self.shuffle, self.shuffle_block)
        if self.is_mixture:
            yield from mixture_stream(
                self.source_shards,
                self.weights,
                *common,
                self.cycle_length,
                start_slot,
                self.kind,
                self.fraction,
            )
            return
        for slot, epoch, ref in record_stream(
            self.source_shards[0],
            *common,
            self.cycle_length,
            self.num_epochs,
            start_slot,
            self.kind,
            self.fraction,
        ):
            yield slot, epoch, 0, ref

    def _check_some_usable(self, first_pass: int) -> bool:
        """With ``drop_bad`` on one endless source: once the map has processed as many
        records as one pass over the corpus holds (``first_pass``), at least one must
        have been usable, or the filter would wait forever for a batch. True when settled."""
        with self._lock:
            counts = dict(self._counts)
        if sum(counts.values()) < first_pass:
            return False
        if counts["ok"] == 0:
            self._fatal = ValueError(
                f"drop_bad=True, but none of the {first_pass} records of one pass over "
                f"{self.shards[:3]}{'...' if len(self.shards) > 3 else ''} gives a usable "
                f"sample ({ {k: v for k, v in counts.items() if v} }): no batch can ever be filled"
            )
            raise self._fatal
        return True

    def _records(self) -> Iterator[tuple[int, int, int, int, bytes, bytes, int]]:
        start_slot = 0 if self.drop_bad else self.start_step * self.batch_size
        settled = not (self.drop_bad and self.num_epochs is None and not self.is_mixture)
        first_pass = None  # records in this process's first epoch
        loader = sa1b.Loader()
        try:
            for slot, epoch, source, ref in self._stream(start_slot):
                if not settled:
                    if first_pass is None and epoch > 0:
                        first_pass = slot
                    if first_pass is not None:
                        settled = self._check_some_usable(first_pass)
                status = int(ref.status)
                jpeg = payload = b""
                if status == Status.OK:
                    try:
                        jpeg, payload = loader.load(ref)
                    except (OSError, EOFError):
                        status = int(Status.TRUNCATED_MEMBER)
                yield slot, epoch, source, status, jpeg, payload, ref.payload_kind
        finally:
            loader.close()

    def _decode(self, status: int, jpeg: bytes, payload: bytes, payload_kind: int) -> tuple:
        """``decode_record``'s ``(decoded or None, status)``, from the cache where it holds the
        record. A record that another map call is decoding at the moment (the same record
        at the end of one epoch and the start of the next, in two chunks mapped in
        parallel) is waited for, not decoded twice."""
        if not self._cache_budget or status != Status.OK:
            return decode_record(jpeg, payload, payload_kind, status, self.cfg)
        digest = hashlib.blake2b(len(jpeg).to_bytes(8, "little"), digest_size=20)
        digest.update(jpeg)
        digest.update(payload)
        key = digest.digest()
        while True:
            with self._lock:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache_info["hits"] += 1
                    return hit
                busy = self._decoding.get(key)
                if busy is None:
                    self._decoding[key] = threading.Event()
                    break
            busy.wait()  # then a hit, or (no room in the cache for it) decoded here
        try:
            entry = decode_record(jpeg, payload, payload_kind, status, self.cfg)
            size = len(key) + (entry[0].nbytes if entry[0] is not None else 0)
            with self._lock:
                if self._cache_info["bytes"] + size <= self._cache_budget:
                    self._cache[key] = entry
                    self._cache_info["records"] += 1
                    self._cache_info["bytes"] += size
        finally:
            with self._lock:
                self._decoding.pop(key).set()
        return entry

    def _chunks(self) -> Iterator[tuple[np.ndarray, ...]]:
        """:meth:`_records` in columns of up to ``batch_size`` records (the last one of a
        finite stream shorter): tf.data then pays its per-element cost once per chunk."""
        chunk = []
        for rec in self._records():
            chunk.append(rec)
            if len(chunk) == self.batch_size:
                yield _columns(chunk)
                chunk = []
        if chunk:
            yield _columns(chunk)

    def _process(self, epoch, status, jpeg, payload, payload_kind):
        """One chunk's samples, stacked: ``BATCH_KEYS`` arrays and the statuses."""
        samples, statuses = [], []
        for e, st, j, p, pk in zip(epoch, status, jpeg, payload, payload_kind):
            dec, st = self._decode(int(st), bytes(j), bytes(p), int(pk))
            samples.append(empty_sample(self.cfg) if dec is None else draw_sample(dec, int(e), self.cfg))
            statuses.append(st)
        with self._lock:
            for st in statuses:
                self._counts[st.counter] += 1
        return tuple(np.stack([x[k] for x in samples]) for k in BATCH_KEYS) + (np.array(statuses, np.int32),)

    def dataset(self):
        """The ``tf.data.Dataset`` of batches (dicts of tensors)."""
        tf = _import_tf()
        spec = empty_sample(self.cfg)
        dtypes = {k: tf.as_dtype(v.dtype) for k, v in spec.items()}
        ds = tf.data.Dataset.from_generator(
            self._chunks,
            output_signature=_chunk_signature(tf),
        )

        def fn(slot, epoch, source, status, jpeg, payload, payload_kind):
            outs = tf.numpy_function(
                self._process,
                [epoch, status, jpeg, payload, payload_kind],
                [dtypes[k] for k in BATCH_KEYS] + [tf.int32],
                stateful=False,
            )
            d = {}
            for k, t in zip(BATCH_KEYS, outs[:-1]):
                t.set_shape((None,) + spec[k].shape)
                d[k] = t
            d["status"] = outs[-1]
            d["status"].set_shape((None,))
            d["slot"] = slot
            d["epoch"] = epoch
            d["source"] = source
            return d

        par = tf.data.AUTOTUNE if self.num_parallel_calls is None else self.num_parallel_calls
        ds = ds.map(fn, num_parallel_calls=par, deterministic=True)
        if self.drop_bad:  # slots are no longer batches: filter the samples and batch again
            ds = ds.unbatch().filter(lambda d: tf.equal(d["status"], 0))
            ds = ds.batch(self.batch_size, drop_remainder=self.num_epochs is None)
        if self.num_epochs is None:  # an endless stream: every batch full
            ds = ds.map(functools.partial(_full_batch, tf, self.batch_size))
        else:  # a finite stream: every record, the last batch padded with invalid slots
            ds = ds.map(functools.partial(_pad_batch, tf, self.batch_size))
        if self.drop_bad and self.start_step:
            ds = ds.skip(self.start_step)
        ds = ds.prefetch(tf.data.AUTOTUNE if self.prefetch is None else self.prefetch)
        opts = tf.data.Options()
        opts.deterministic = True
        ds = ds.with_options(opts)
        return ds

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        it = self._batches()
        _OPEN_ITERATORS.add(it)
        return it

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        tf = _import_tf()
        self._fatal = None
        try:
            yield from self.dataset().as_numpy_iterator()
        except tf.errors.OpError:
            if self._fatal is not None:  # our own error, raised in the record generator
                raise self._fatal from None
            raise


# Iterators still open at exit are closed while Python is fully alive: a tf.data
# iterator destroyed during interpreter shutdown can wait forever for its map calls.
_OPEN_ITERATORS: weakref.WeakSet = weakref.WeakSet()
atexit.register(lambda: [it.close() for it in list(_OPEN_ITERATORS)])
