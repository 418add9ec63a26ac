"""Training-data subsets for the scaling ablations (paper section 7.6, Figure 13).

The paper trains on 0.1M, 1M and 11M SA-1B images and on mixtures of the data
engine's stages (section 4), oversampling the manual and semi-automatic masks.
Two mechanisms here serve those axes:

* **A fraction of the images, by image id.** :func:`image_unit` maps an image id
  to a number in ``[0, 1)`` through a hash of the id alone (not of the seed, the
  shard, the process or the cell), and :func:`in_fraction` keeps the images whose
  number is below the fraction. Every cell of a sweep therefore sees the same
  subset for the same fraction, and subsets are nested: the 0.1 subset lies inside
  the 0.5 subset. The expected size is ``fraction * N`` (binomial spread).
  ``data.fraction`` in the training config applies it to the SA-1B pipeline
  (:func:`record_image_id` reads the id from the record's name, ``sa_<id>``) and
  to the synthetic corpus below.
* **Mixtures of sources with weights.** ``data.train_dir`` may be a list of sources
  ``[(glob, weight), ...]`` (or ``(glob, weight, name)``), e.g. the data engine's
  stages. :func:`mixture_sources` reads it; every sample of the stream is drawn from
  source ``i`` with probability ``weight_i / sum(weights)`` (:func:`mixture_choices`),
  independently of the others, and then takes the next record of that source's own
  shuffled, epoch-repeating stream (``data.pipeline.mixture_stream``). The choice of
  slot ``t`` is a pure function of ``(seed, process, t)``, so the number of draws of
  each source before any slot is known without reading data (:func:`mixture_counts`)
  and a run resumes exactly at any step. A weight is the source's share of the
  samples, not a per-image rate: the paper's "manual and semi-automatic data
  oversampled 10x" (section 7.6) is ``weight = 10 x`` the stage's image count next to
  the automatic stage's image count (``configs/sweeps/paper_fig13.py``).

:func:`synthetic_corpus_batches` is a finite synthetic corpus of ``N`` images with
ids ``0..N-1`` (each image a pure function of its id), read in epochs through the
same fraction, so that data volume can be ablated on a CPU without SA-1B.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CORPUS_SEED_BASE",
    "fraction_ids",
    "image_unit",
    "in_fraction",
    "is_mixture",
    "mixture_choices",
    "mixture_counts",
    "mixture_sources",
    "record_image_id",
    "Source",
    "source_name",
    "synthetic_corpus_batches",
]

# Corpus image ``i`` is generated from seed CORPUS_SEED_BASE + i: far from the seeds of the
# streaming synthetic batches and of train.evaluate's held-out batches (10**6 + i).
CORPUS_SEED_BASE = 2**40
_SA_ID = re.compile(r"sa_(\d+)$")


def image_unit(image_id) -> float:
    """A number in ``[0, 1)`` that depends only on ``image_id`` (int or str): the first 8
    bytes of its BLAKE2b hash, so it is the same on every machine, process and cell."""
    digest = hashlib.blake2b(str(image_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def _check_fraction(fraction: float) -> float:
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"data.fraction must be in (0, 1], got {fraction}")
    return fraction


def in_fraction(image_id, fraction: float) -> bool:
    """Whether ``image_id`` belongs to the ``fraction`` subset (``1.0`` keeps every image)."""
    fraction = _check_fraction(fraction)
    return fraction >= 1.0 or image_unit(image_id) < fraction


def fraction_ids(image_ids, fraction: float) -> np.ndarray:
    """The ids of ``image_ids (N,)`` kept by ``fraction``, in their given order."""
    ids = np.asarray(list(image_ids))
    keep = np.array([in_fraction(i, fraction) for i in ids.tolist()], bool)
    return ids[keep] if len(ids) else ids


def record_image_id(key: str) -> int | str:
    """The image id of a record key ``<shard>:<stem>``: the integer of an SA-1B stem
    ``sa_<id>``, else the stem itself (e.g. a TFDS record index), which is hashed as is."""
    stem = key.rsplit(":", 1)[-1]
    stem = stem.rsplit("/", 1)[-1]
    m = _SA_ID.search(stem)
    return int(m.group(1)) if m else stem


def is_mixture(sources) -> bool:
    """Whether ``sources`` is a mixture: a mapping ``{glob: weight}`` or a non-empty list of
    ``(glob, weight)`` / ``(glob, weight, name)`` (not a glob or a list of shard paths)."""
    if isinstance(sources, Mapping) or hasattr(sources, "items"):
        return True
    return (
        not isinstance(sources, (str, os.PathLike))
        and len(sources) > 0
        and all(
            isinstance(s, (tuple, list)) and len(s) in (2, 3) and not isinstance(s[1], str) for s in sources
        )
    )


@dataclass(frozen=True)
class Source:
    """One source of a mixture: ``pattern`` (a glob, a shard or a folder of shards),
    its sampling ``weight`` (> 0) and its ``name`` in the metrics (``source_count/<name>``)."""

    pattern: str
    weight: float
    name: str


def source_name(pattern: str) -> str:
    """The name of a source in the metrics: the last path component without wildcards
    (``/data/engine/manual/*.tar`` -> ``manual``; a shard ``/d/sa_1.tar`` -> ``sa_1``)."""
    parts = [p for p in os.fspath(pattern).rstrip("/").split("/") if p]
    for part in reversed(parts):
        if not globlib.has_magic(part):
            return part[: -len(".tar")] if part.endswith(".tar") else part
    return "source"


def mixture_sources(spec) -> tuple[Source, ...]:
    """``[(glob, weight) or (glob, weight, name), ...]`` (or ``{glob: weight}``) -> sources,
    named by :func:`source_name` unless named; names are made unique with ``_<index>``.

    Raises:
      ValueError: no source, a weight that is not a finite number > 0, or a bad item.
    """
    items = list(spec.items()) if hasattr(spec, "items") else [tuple(s) for s in spec]
    if not items:
        raise ValueError("data.train_dir: empty mixture")
    out = []
    for item in items:
        if len(item) not in (2, 3) or not isinstance(item[0], (str, os.PathLike)):
            raise ValueError(
                f"data.train_dir: a mixture item is (glob, weight) or (glob, weight, name), got {item!r}"
            )
        pattern, weight = os.fspath(item[0]), item[1]
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
            or weight <= 0
        ):
            raise ValueError(
                f"data.train_dir: the weight of {pattern!r} must be a number > 0, got {weight!r}"
            )
        name = str(item[2]) if len(item) == 3 else source_name(pattern)
        out.append(Source(pattern, float(weight), name))
    names = [s.name for s in out]
    return tuple(
        Source(s.pattern, s.weight, s.name if names.count(s.name) == 1 else f"{s.name}_{i}")
        for i, s in enumerate(out)
    )


# Slots whose source choices are drawn from one generator (the unit of the choice stream).
CHOICE_BLOCK = 4096


def _choice_block(cum: np.ndarray, seed: int, process_index: int, block: int) -> np.ndarray:
    u = np.random.default_rng([seed, process_index, 3, block]).random(CHOICE_BLOCK)
    return np.minimum(np.searchsorted(cum, u, side="right"), len(cum) - 1)


def _cumulative(weights) -> np.ndarray:
    w = np.asarray(weights, np.float64)
    return np.cumsum(w) / w.sum()


def mixture_choices(weights, seed: int, process_index: int, start: int, stop: int) -> np.ndarray:
    """``(stop - start,)`` int64: the source of each slot in ``[start, stop)`` of a process's
    stream. Slot ``t`` is source ``i`` with probability ``weights[i] / sum(weights)``,
    drawn from ``(seed, process_index, t // CHOICE_BLOCK)`` alone."""
    cum = _cumulative(weights)
    if stop <= start:
        return np.zeros(0, np.int64)
    b0, b1 = start // CHOICE_BLOCK, (stop - 1) // CHOICE_BLOCK
    blocks = np.concatenate([_choice_block(cum, seed, process_index, b) for b in range(b0, b1 + 1)])
    return blocks[start - b0 * CHOICE_BLOCK : stop - b0 * CHOICE_BLOCK].astype(np.int64)


def mixture_counts(weights, seed: int, process_index: int, num_slots: int) -> np.ndarray:
    """``(len(weights),)`` int64: how many of a process's first ``num_slots`` slots each source
    got (where each source's record stream stands at slot ``num_slots``)."""
    cum = _cumulative(weights)
    counts = np.zeros(len(cum), np.int64)
    full = num_slots // CHOICE_BLOCK
    for b in range(full):
        counts += np.bincount(_choice_block(cum, seed, process_index, b), minlength=len(cum))
    rest = num_slots - full * CHOICE_BLOCK
    if rest:
        counts += np.bincount(_choice_block(cum, seed, process_index, full)[:rest], minlength=len(cum))
    return counts


def synthetic_corpus_batches(
    num_images: int,
    fraction: float,
    seed: int,
    batch_size: int,
    masks_per_image: int,
    image_size: int,
    start_step: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    target_size: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Batches of this process from a corpus of ``num_images`` synthetic images, restricted
    to ``fraction`` (by id, :func:`in_fraction`), from ``start_step`` on.

    Global step ``s`` reads slots ``[s*G, (s+1)*G)`` of the stream (``G = batch_size *
    process_count``; process ``p`` takes its ``batch_size`` consecutive ones); slot ``t``
    is image ``perm_e[t mod n]`` of epoch ``e = t // n``, ``perm_e`` a permutation of the
    ``n`` kept ids drawn from ``(seed, e)``. Resuming at ``start_step`` continues exactly.
    """
    from data.synthetic_batch import make_batch

    kept = fraction_ids(range(num_images), fraction)
    n = len(kept)
    if n == 0:
        raise ValueError(f"data.fraction={fraction} of a {num_images}-image corpus keeps no image")
    perms: dict[int, np.ndarray] = {}

    def image(slot: int) -> dict[str, np.ndarray]:
        epoch, pos = divmod(slot, n)
        if epoch not in perms:
            perms.clear()
            perms[epoch] = np.random.default_rng([seed, epoch]).permutation(kept)
        image_id = int(perms[epoch][pos])
        one = make_batch(CORPUS_SEED_BASE + image_id, 1, masks_per_image, image_size, target_size=target_size)
        one["image_id"][:] = image_id
        return one

    step = start_step
    while True:
        first = (step * process_count + process_index) * batch_size
        samples = [image(first + i) for i in range(batch_size)]
        yield {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}
        step += 1
