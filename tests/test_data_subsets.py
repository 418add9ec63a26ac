"""Data fractions by image id (deterministic, nested, the right size), mixtures of
sources (parsing, the seeded choice of each slot's source), and the finite synthetic
corpus (resumable, restricted to the fraction)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from data.subsets import (
    CHOICE_BLOCK,
    Source,
    fraction_ids,
    image_unit,
    in_fraction,
    is_mixture,
    mixture_choices,
    mixture_counts,
    mixture_sources,
    record_image_id,
    source_name,
    synthetic_corpus_batches,
)

N = 20000


@pytest.fixture(scope="module")
def ids():
    # SA-1B-like ids: large, sparse, not contiguous
    return np.random.default_rng(0).choice(10**7, N, replace=False)


def test_fraction_deterministic_and_independent_of_order(ids):
    a = fraction_ids(ids, 0.1)
    b = fraction_ids(ids[::-1], 0.1)
    assert np.array_equal(np.sort(a), np.sort(b))
    assert np.array_equal(a, fraction_ids(ids, 0.1))
    # a pure function of the id: the same whatever else is in the list
    assert set(fraction_ids(ids[:500], 0.1)) == set(a) & set(ids[:500].tolist())
    assert image_unit(1234) == image_unit("1234")


@pytest.mark.parametrize("fraction", [0.01, 0.1, 0.5])
def test_fraction_size_within_sampling_error(ids, fraction):
    n = len(fraction_ids(ids, fraction))
    sd = math.sqrt(N * fraction * (1 - fraction))
    assert abs(n - fraction * N) < 4 * sd, (n, fraction * N, sd)


def test_fractions_are_nested(ids):
    small, mid, big = (set(fraction_ids(ids, f).tolist()) for f in (0.1, 0.5, 0.9))
    assert small < mid < big
    assert set(fraction_ids(ids, 1.0).tolist()) == set(ids.tolist())


def test_bad_fraction_is_refused():
    for f in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="data.fraction"):
            in_fraction(3, f)


def test_record_image_id():
    assert record_image_id("/d/sa_000001.tar:sa_223750") == 223750
    assert record_image_id("/d/folder:sub/sa_17") == 17
    assert record_image_id("/d/x.tfrecord:42") == "42"


def test_mixture_sources_names_and_errors():
    mix = [
        ("/d/engine/manual/*.tar", 10),
        ("/d/engine/semi_automatic", 10.0),
        ("/d/sa1b/sa_*.tar", 1, "auto"),
    ]
    assert is_mixture(mix) and is_mixture({"/a/*.tar": 1}) and is_mixture([["/a", 2]])  # as read from JSON
    assert not is_mixture("/d/sa1b") and not is_mixture(["a.tar", "b.tar"]) and not is_mixture([("a", "b")])
    assert mixture_sources(mix) == (
        Source("/d/engine/manual/*.tar", 10.0, "manual"),
        Source("/d/engine/semi_automatic", 10.0, "semi_automatic"),
        Source("/d/sa1b/sa_*.tar", 1.0, "auto"),
    )
    assert [s.name for s in mixture_sources([("/x/a/*.tar", 1), ("/y/a/*.tar", 2)])] == ["a_0", "a_1"]
    assert source_name("/d/sa_000001.tar") == "sa_000001"
    for bad, msg in (
        ([], "empty"),
        ([("/a", 0)], "weight"),
        ([("/a", float("nan"))], "weight"),
        ([("/a", True)], "weight"),
    ):
        with pytest.raises(ValueError, match=msg):
            mixture_sources(bad)


def test_mixture_choices_are_a_function_of_the_slot():
    w = (3.0, 1.0)
    a = mixture_choices(w, 5, 0, 0, 3 * CHOICE_BLOCK)
    assert np.array_equal(a[1000:9000], mixture_choices(w, 5, 0, 1000, 9000))  # any window, same draws
    assert not np.array_equal(a, mixture_choices(w, 6, 0, 0, 3 * CHOICE_BLOCK))  # seed
    assert not np.array_equal(a, mixture_choices(w, 5, 1, 0, 3 * CHOICE_BLOCK))  # process
    for n in (0, 1, 4095, 4096, 9000):
        assert mixture_counts(w, 5, 0, n).tolist() == np.bincount(a[:n], minlength=2).tolist()
    # 3 blocks of draws at p = 0.75: within 4 binomial standard deviations (sd 48)
    n, p = len(a), 0.75
    assert abs((a == 0).sum() - n * p) < 4 * math.sqrt(n * p * (1 - p))


def test_synthetic_corpus_fraction_and_resume():
    kw = {"num_images": 60, "seed": 3, "batch_size": 2, "masks_per_image": 2, "image_size": 32}
    kept = set(fraction_ids(range(60), 0.25).tolist())
    it = synthetic_corpus_batches(fraction=0.25, **kw)
    batches = [next(it) for _ in range(len(kept))]  # two epochs of the subset
    seen = np.concatenate([b["image_id"] for b in batches])
    assert set(seen.tolist()) == kept
    first_epoch = seen[: len(kept)]
    assert sorted(first_epoch.tolist()) == sorted(kept)  # each image once per epoch
    # resuming at step 3 gives exactly the batches of an uninterrupted stream
    resumed = synthetic_corpus_batches(fraction=0.25, start_step=3, **kw)
    for s in range(3, 6):
        b = next(resumed)
        assert np.array_equal(b["image_id"], batches[s]["image_id"])
        assert np.array_equal(b["image"], batches[s]["image"])
    # an image is a function of its id alone: same pixels in the full corpus' stream
    full = synthetic_corpus_batches(fraction=1.0, **kw)
    by_id = {}
    for _ in range(30):
        b = next(full)
        by_id.update({int(i): img for i, img in zip(b["image_id"], b["image"])})
    i = int(batches[0]["image_id"][0])
    assert np.array_equal(by_id[i], batches[0]["image"][0])
    # two processes split a global batch without overlap
    p0 = next(synthetic_corpus_batches(fraction=0.25, process_index=0, process_count=2, **kw))
    p1 = next(synthetic_corpus_batches(fraction=0.25, process_index=1, process_count=2, **kw))
    assert np.array_equal(
        np.concatenate([p0["image_id"], p1["image_id"]]),
        np.concatenate([batches[0]["image_id"], batches[1]["image_id"]]),
    )


def test_record_stream_keeps_the_fraction(tmp_path):
    from data.pipeline import record_stream
    from data.synthetic import write_shards

    write_shards(str(tmp_path), num_images=24, images_per_shard=6, seed=1, short_side=48)
    shards = sorted(str(p) for p in tmp_path.glob("*.tar"))
    every = [ref for _, _, ref in record_stream(shards, seed=0, num_epochs=1)]
    ids = [record_image_id(r.key) for r in every]
    assert len(ids) == 24 and all(isinstance(i, int) for i in ids)
    got = list(record_stream(shards, seed=0, num_epochs=2, fraction=0.5))
    want = {i for i in ids if in_fraction(i, 0.5)}
    assert 0 < len(want) < 24
    assert [s for s, _, _ in got] == list(range(2 * len(want)))  # slots count kept images only
    assert {record_image_id(r.key) for _, e, r in got if e == 0} == want
    assert {record_image_id(r.key) for _, e, r in got if e == 1} == want
