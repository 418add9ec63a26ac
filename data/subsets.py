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
* **Stage mixtures with weights.** :func:`weighted_shards` turns
  ``((shard glob, integer weight), ...)`` into a shard list in which each shard appears
  ``weight`` times, so one epoch reads a stage's images ``weight`` times (the
  paper's 10x oversampling of manual + semi-automatic masks). ``data.mixture``
  holds such pairs ``((glob, weight), ...)``.

:func:`synthetic_corpus_batches` is a finite synthetic corpus of ``N`` images with
ids ``0..N-1`` (each image a pure function of its id), read in epochs through the
same fraction, so that data volume can be ablated on a CPU without SA-1B.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Mapping

import numpy as np

__all__ = [
    "CORPUS_SEED_BASE",
    "fraction_ids",
    "image_unit",
    "in_fraction",
    "is_mixture",
    "record_image_id",
    "synthetic_corpus_batches",
    "weighted_shards",
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
    """Whether ``sources`` is a stage mixture (a mapping or pairs ``(glob, weight)``)."""
    if isinstance(sources, Mapping) or hasattr(sources, "items"):
        return True
    return (
        not isinstance(sources, str)
        and len(sources) > 0
        and all(isinstance(s, (tuple, list)) and len(s) == 2 for s in sources)
    )


def weighted_shards(sources) -> list[str]:
    """``((glob or path, integer weight >= 1), ...)`` (or a mapping) -> sorted shard list,
    each shard ``weight`` times (the record order then reads it ``weight`` times per epoch)."""
    from data.sa1b import resolve_shards

    pairs = list(sources.items()) if hasattr(sources, "items") else [tuple(s) for s in sources]
    out: list[str] = []
    for pattern, weight in pairs:
        if int(weight) != weight or weight < 1:
            raise ValueError(f"weight of {pattern!r} must be an integer >= 1, got {weight}")
        out += resolve_shards(pattern) * int(weight)
    if not out:
        raise ValueError("data.train_dir: empty mixture")
    return sorted(out)


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
        one = make_batch(CORPUS_SEED_BASE + image_id, 1, masks_per_image, image_size)
        one["image_id"][:] = image_id
        return one

    step = start_step
    while True:
        first = (step * process_count + process_index) * batch_size
        samples = [image(first + i) for i in range(batch_size)]
        yield {k: np.concatenate([s[k] for s in samples]) for k in samples[0]}
        step += 1
