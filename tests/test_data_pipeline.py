"""tf.data SA-1B pipeline: readers, bad data, determinism, resumption, sharding, targets."""

from __future__ import annotations

import glob
import io
import itertools
import json
import os
import tarfile

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from pycocotools import mask as mask_utils

from data import sa1b
from data.pipeline import Pipeline, mixture_stream, record_stream
from data.status import Status
from data.synthetic import encode_jpeg, generate_image, sample_json, write_shards
from sam_jax.geometry import PIXEL_MEAN, PIXEL_STD

SEED = 11
SHORT = 64
S, R, K = 64, 32, 6


def _small(**kw):
    base = dict(
        batch_size=2,
        model_size=S,
        target_size=R,
        max_masks=K,
        process_index=0,
        process_count=1,
        num_parallel_calls=2,
    )
    base.update(kw)
    return base


def _take(pipe, n=None):
    out = []
    for b in pipe:
        out.append(b)
        if n is not None and len(out) == n:
            break
    return out


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    out = tmp_path_factory.mktemp("sa1b")
    write_shards(str(out), num_images=10, images_per_shard=3, seed=SEED, short_side=SHORT, extract=True)
    return str(out)


def _make_tfds(src_dir: str, data_dir: str) -> str:
    """Write a TFDS segment_anything dataset with the real builder's features and
    annotation conversion, over the extracted synthetic folders."""
    import tensorflow_datasets as tfds
    from etils import epath
    from tensorflow_datasets.core import registered
    from tensorflow_datasets.datasets.segment_anything import segment_anything_dataset_builder as sab

    with registered.skip_registration():

        class LocalSegmentAnything(sab.Builder):
            name = "segment_anything"

            @classmethod
            def _get_pkg_dir_path(cls):
                return epath.Path(sab.__file__).parent

            def _split_generators(self, dl_manager):
                return {"train": self._gen()}

            def _gen(self):
                for jpg in sorted(glob.glob(os.path.join(src_dir, "sa_*", "*.jpg"))):
                    rec = json.loads(open(jpg[:-4] + ".json").read())
                    img = rec["image"]
                    img["content"] = epath.Path(jpg)
                    anns = sab._parse_annotations(rec["annotations"], img["height"], img["width"])
                    yield img["image_id"], {"image": img, "annotations": anns}

    b = LocalSegmentAnything(data_dir=data_dir)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=data_dir))
    files = glob.glob(
        os.path.join(data_dir, "segment_anything", "1.0.0", "segment_anything-train.tfrecord-*")
    )
    assert files
    return files[0]


def _by_id(batches):
    out = {}
    for b in batches:
        for i in range(len(b["image_id"])):
            if b["status"][i] == 0:
                out[int(b["image_id"][i])] = {k: v[i] for k, v in b.items() if k not in ("slot",)}
    return out


def test_readers_agree_tar_folder_tfds(syn, tmp_path):
    tfrec = _make_tfds(syn, str(tmp_path))
    # The TFDS example keeps the SA-1B normalised box convention.
    refs = list(sa1b.iter_refs(tfrec))
    assert len(refs) == 10
    tar = _by_id(
        _take(Pipeline(os.path.join(syn, "*.tar"), num_epochs=1, shuffle=False, **_small(batch_size=1)))
    )
    folders = sorted(p for p in glob.glob(os.path.join(syn, "sa_*")) if os.path.isdir(p))
    fold = _by_id(_take(Pipeline(folders, num_epochs=1, shuffle=False, **_small(batch_size=1))))
    tfds_ = _by_id(_take(Pipeline(tfrec, num_epochs=1, shuffle=False, **_small(batch_size=1))))
    assert sorted(tar) == sorted(fold) == sorted(tfds_) == list(range(1, 11))
    for i in tar:
        for k in tar[i]:
            np.testing.assert_array_equal(tar[i][k], fold[i][k], err_msg=k)
            np.testing.assert_array_equal(tar[i][k], tfds_[i][k], err_msg=k)
    # Stored order: tar and folder read the same sequence.
    tar_order = [
        ref.key.rsplit(":", 1)[1]
        for p in sorted(glob.glob(os.path.join(syn, "*.tar")))
        for ref in sa1b.iter_refs(p)
    ]
    fold_order = [ref.key.rsplit(":", 1)[1] for p in folders for ref in sa1b.iter_refs(p)]
    assert tar_order == fold_order == [f"sa_{i}" for i in range(1, 11)]


def _rec(seed, index, short=SHORT):
    s = generate_image(seed, index, short)
    return s, encode_jpeg(s.image), sample_json(s, seed)


def _add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


@pytest.fixture(scope="module")
def bad_shard(tmp_path_factory):
    """One shard: good, corrupt jpeg, bad json, good, rle size mismatch, no usable
    mask, bad rle, unpaired, good, then a truncated member."""
    d = tmp_path_factory.mktemp("bad")
    path = str(d / "sa_000000.tar")
    expected = []
    with tarfile.open(path, "w") as tar:

        def good(i):
            s, jpg, js = _rec(SEED, i)
            _add(tar, f"sa_{s.image_id}.jpg", jpg)
            _add(tar, f"sa_{s.image_id}.json", json.dumps(js).encode())
            expected.append(("ok", s.image_id))

        good(0)
        s, jpg, js = _rec(SEED, 1)
        _add(tar, "sa_2.jpg", jpg[: len(jpg) // 3] + b"\x00garbage")
        _add(tar, "sa_2.json", json.dumps(js).encode())
        expected.append(("corrupt_jpeg", 2))
        s, jpg, js = _rec(SEED, 2)
        _add(tar, "sa_3.jpg", jpg)
        _add(tar, "sa_3.json", json.dumps(js).encode()[:-20])
        expected.append(("bad_json", 3))
        good(3)
        s, jpg, js = _rec(SEED, 4)
        js["annotations"][1]["segmentation"]["size"] = [s.height + 1, s.width]
        _add(tar, "sa_5.jpg", jpg)
        _add(tar, "sa_5.json", json.dumps(js).encode())
        expected.append(("rle_size_mismatch", 5))
        s, jpg, js = _rec(SEED, 5)
        full = mask_utils.encode(np.asfortranarray(np.ones((s.height, s.width), np.uint8)))
        for a in js["annotations"]:
            a["segmentation"]["counts"] = full["counts"].decode()
        _add(tar, "sa_6.jpg", jpg)
        _add(tar, "sa_6.json", json.dumps(js).encode())
        expected.append(("no_usable_mask", 6))
        s, jpg, js = _rec(SEED, 6)
        for a in js["annotations"]:  # runs not summing to h*w
            a["segmentation"]["counts"] = a["segmentation"]["counts"][:-2]
        _add(tar, "sa_7.jpg", jpg)
        _add(tar, "sa_7.json", json.dumps(js).encode())
        expected.append(("bad_rle", 7))
        s, jpg, js = _rec(SEED, 7)
        _add(tar, "sa_8.jpg", jpg)  # no json
        good(8)
        s, jpg, js = _rec(SEED, 9)
        _add(tar, "sa_10.jpg", jpg)
        _add(tar, "sa_10.json", json.dumps(js).encode())
    # Truncate inside the last member.
    size = os.path.getsize(path)
    with tarfile.open(path) as t:
        last = t.getmembers()[-1]
    with open(path, "r+b") as f:
        f.truncate(last.offset_data + last.size // 2)
    assert os.path.getsize(path) < size
    expected.append(("truncated_member", 10))
    expected.append(("unpaired_member", 8))  # lonely members are reported at the end of the shard
    return path, expected


def test_bad_samples_skipped_in_order_and_counted(bad_shard):
    path, expected = bad_shard
    good_ids = [i for st, i in expected if st == "ok"]
    want = {}
    for st, _ in expected:
        want[st] = want.get(st, 0) + 1
    assert want == {
        "ok": 3,
        "corrupt_jpeg": 1,
        "bad_json": 1,
        "rle_size_mismatch": 1,
        "no_usable_mask": 1,
        "bad_rle": 1,
        "unpaired_member": 1,
        "truncated_member": 1,
    }

    # drop_bad: exactly the good samples, in order.
    pipe = Pipeline(path, num_epochs=1, shuffle=False, drop_bad=True, **_small(batch_size=1))
    batches = _take(pipe)
    assert [int(b["image_id"][0]) for b in batches] == good_ids
    assert all(b["mask_valid"].any() for b in batches)
    stats = pipe.stats()
    for k in want:
        assert stats[k] == want[k], (k, stats)

    # Slot mode: one slot per record, status per slot, images never shifted.
    pipe = Pipeline(path, num_epochs=1, shuffle=False, **_small(batch_size=1))
    batches = _take(pipe)
    from data.status import Status

    assert [Status(int(b["status"][0])).counter for b in batches] == [st for st, _ in expected]
    for b, (st, img_id) in zip(batches, expected):
        if st == "ok":
            assert int(b["image_id"][0]) == img_id and b["mask_valid"][0].any()
        else:
            assert int(b["image_id"][0]) == -1 and not b["mask_valid"][0].any() and not b["image"].any()


def test_tar_cut_between_members_counts_as_truncated(tmp_path):
    """A cut inside a member's header, or a missing end-of-archive block, is truncation
    (Python's tarfile just returns None there)."""
    path = str(tmp_path / "sa_1.tar")
    with tarfile.open(path, "w") as tar:
        for i in (1, 2):
            _add(tar, f"sa_{i}.jpg", b"j" * 10)
            _add(tar, f"sa_{i}.json", b"{}")
    with tarfile.open(path) as t:
        members = t.getmembers()
    data = open(path, "rb").read()

    def statuses(n_bytes):
        with open(path, "wb") as f:
            f.write(data[:n_bytes])
        return [(r.key.rsplit(":", 1)[1], Status(r.status).counter) for r in sa1b.iter_refs(path)]

    json2, jpg2 = members[3], members[2]
    assert statuses(len(data)) == [("sa_1", "ok"), ("sa_2", "ok")]
    assert statuses(json2.offset + 100) == [("sa_1", "ok"), ("sa_2", "truncated_member")]
    assert statuses(jpg2.offset + 100) == [("sa_1", "ok"), ("<end>", "truncated_member")]
    end = json2.offset_data + tarfile.BLOCKSIZE  # both pairs whole, no end-of-archive block
    assert statuses(end) == [("sa_1", "ok"), ("sa_2", "ok"), ("<end>", "truncated_member")]


def _tar_ids(folder):
    ids = []
    for t in glob.glob(os.path.join(folder, "*.tar")):
        with tarfile.open(t) as tar:
            ids += [int(os.path.basename(n)[3:-4]) for n in tar.getnames() if n.endswith(".jpg")]
    return sorted(ids)


def test_one_epoch_delivers_every_record_padding_the_last_batch(syn):
    """num_epochs=1: 10 records at batch 4 are 3 batches, the last with 2 padding slots; a
    shard of 3 records at batch 4 is one batch (no record dropped)."""
    tars = sorted(glob.glob(os.path.join(syn, "*.tar")))
    pipe = Pipeline(tars, num_epochs=1, shuffle=False, **_small(batch_size=4))
    batches = _take(pipe)
    assert [b["image"].shape[0] for b in batches] == [4, 4, 4]
    ids = np.concatenate([b["image_id"] for b in batches])
    status = np.concatenate([b["status"] for b in batches])
    assert sorted(ids[:10]) == _tar_ids(syn) and len(set(ids[:10])) == 10
    np.testing.assert_array_equal(status, [0] * 10 + [Status.PADDING] * 2)
    np.testing.assert_array_equal(ids[10:], [-1, -1])
    last = batches[-1]
    assert not last["mask_valid"][2:].any() and last["mask_valid"][:2].any(axis=1).all()
    np.testing.assert_array_equal(last["slot"], [8, 9, -1, -1])
    assert not last["image"][2:].any() and not last["masks"][2:].any()
    assert sum(pipe.stats().values()) == 10 and "padding" not in pipe.stats()

    one = _take(Pipeline(tars[0], num_epochs=1, shuffle=False, **_small(batch_size=4)))
    assert len(one) == 1 and list(one[0]["status"]) == [0, 0, 0, Status.PADDING]


def test_evaluation_batches_cover_every_held_out_image(syn):
    from configs.tiny import get_config
    from train.evaluate import eval_batches

    c = get_config()
    c.data.masks_per_image = K
    seen = [i for b in eval_batches(c, S, syn, batch_size=4) for i in b["image_id"] if i >= 0]
    assert sorted(seen) == _tar_ids(syn)


def test_missing_inputs_are_clear_errors(tmp_path):
    pat = str(tmp_path / "nothing_*.tar")
    with pytest.raises(FileNotFoundError, match="nothing_"):
        Pipeline(pat, batch_size=1)
    with pytest.raises(FileNotFoundError, match="missing.tar"):
        Pipeline([str(tmp_path / "missing.tar")], batch_size=1)


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("mixture", [False, True], ids=["single", "mixture"])
def test_same_seed_same_batches_and_resume(syn, mixture):
    kw = dict(seed=3, shuffle_block=4, cycle_length=2, **_small(batch_size=3))
    tars = os.path.join(syn, "*.tar")
    if mixture:  # the same shards as two weighted sources: images 1-6 and 7-10
        tars = [
            (os.path.join(syn, "sa_00000[01].tar"), 3, "first"),
            (os.path.join(syn, "sa_00000[23].tar"), 1),
        ]
        assert Pipeline(tars, **kw).source_names == ("first", os.path.basename(syn))
    full = _take(Pipeline(tars, **kw), 8)  # 24 slots > 10 images: crosses 2 epochs
    again = _take(Pipeline(tars, **kw), 8)
    _assert_same(full, again)
    epochs = np.concatenate([b["epoch"] for b in full])
    ids = np.concatenate([b["image_id"] for b in full])
    sources = np.concatenate([b["source"] for b in full])
    if mixture:
        # every sample comes from its own source, whose stream repeats its images per epoch
        assert set(sources.tolist()) == {0, 1} and np.array_equal(sources, (ids > 6).astype(int))
        first = ids[sources == 0]
        assert (epochs[sources == 0] == np.arange(len(first)) // 6).all()
        assert sorted(first[:6].tolist()) == list(range(1, 7)) and len(first) > 12
    else:
        assert set(epochs.tolist()) == {0, 1, 2} and not sources.any()
        assert sorted(ids[epochs == 0].tolist()) == list(range(1, 11))
        assert ids[epochs == 0].tolist() != ids[epochs == 1].tolist()  # reshuffled per epoch
        assert ids[:10].tolist() != list(range(1, 11))
    other = _take(Pipeline(tars, **dict(kw, seed=4)), 2)
    assert np.concatenate([b["image_id"] for b in other]).tolist() != ids[:6].tolist()
    # Resume at step 3 (slot 9: inside epoch 0) and step 5 (epoch 1).
    for s in (3, 5):
        resumed = _take(Pipeline(tars, start_step=s, **kw), 8 - s)
        _assert_same(full[s:], resumed)
        counts = Pipeline(tars, start_step=s, **kw).start_source_counts
        assert counts.tolist() == np.bincount(sources[: 3 * s], minlength=len(counts)).tolist()
    # Skipping does not decode the skipped records.
    p = Pipeline(tars, start_step=6, prefetch=1, **dict(kw, num_parallel_calls=1))
    _take(p, 1)
    assert sum(p.stats().values()) < 6 * 3


def test_mixture_weights_within_sampling_error(syn):
    """4200 draws from three sources weighted 10:10:1: each source's count lies within
    4 binomial standard deviations of ``N * w / sum(w)`` (sd 32, 32, 14), and each
    source's records come in the order of that source read alone."""
    tars = sorted(glob.glob(os.path.join(syn, "*.tar")))
    sources = [[tars[0]], tars[1:3], [tars[3]]]
    weights = (10, 10, 1)
    n = 4200
    got = list(itertools.islice(mixture_stream(sources, weights, seed=2, shuffle_block=4), n))
    assert [s for s, _, _, _ in got] == list(range(n))
    counts = np.bincount([src for _, _, src, _ in got], minlength=3)
    p = np.array(weights) / sum(weights)
    sd = np.sqrt(n * p * (1 - p))
    assert (np.abs(counts - n * p) < 4 * sd).all(), (counts, n * p, sd)
    for i, shards in enumerate(sources):
        alone = record_stream(shards, seed=2, shuffle_block=4)
        mine = [(e, r.key) for _, e, src, r in got if src == i]
        assert mine == [(e, r.key) for _, e, r in itertools.islice(alone, len(mine))]
        assert {r.shard for _, _, src, r in got if src == i} == set(shards)
    # resuming the record order at any slot continues it exactly
    assert (
        list(itertools.islice(mixture_stream(sources, weights, seed=2, shuffle_block=4, start_slot=1234), 50))
        == got[1234:1284]
    )
    with pytest.raises(ValueError, match="endless"):
        Pipeline([(tars[0], 1), (tars[1], 1)], num_epochs=1, **_small())
    with pytest.raises(ValueError, match="weight"):
        Pipeline([(tars[0], 0), (tars[1], 1)], **_small())


def test_resume_with_drop_bad(bad_shard):
    path, _ = bad_shard
    kw = dict(seed=5, drop_bad=True, **_small(batch_size=2))
    full = _take(Pipeline(path, **kw), 4)
    _assert_same(full[2:], _take(Pipeline(path, start_step=2, **kw), 2))


def test_drop_bad_on_a_corpus_with_no_usable_record_is_an_error(tmp_path):
    """An endless ``drop_bad`` stream whose records are all bad would wait forever for a
    batch: after one pass it names the shards and what was wrong with the records."""
    path = str(tmp_path / "sa_000000.tar")
    with tarfile.open(path, "w") as tar:
        for i in range(3):
            s, jpg, js = _rec(SEED, i)
            _add(tar, f"sa_{s.image_id}.jpg", jpg)
            _add(tar, f"sa_{s.image_id}.json", b"{not json")
    pipe = Pipeline(path, drop_bad=True, **_small(batch_size=2))
    with pytest.raises(ValueError, match=r"none of the 3 records .*sa_000000\.tar.*'bad_json': [3-9]"):
        _take(pipe, 1)
    # Without drop_bad the same corpus gives all-invalid slots, batch after batch.
    (b,) = _take(Pipeline(path, **_small(batch_size=2)), 1)
    assert not b["mask_valid"].any() and (b["status"] == int(Status.BAD_JSON)).all()


def test_decoded_cache_gives_the_same_batches(syn, bad_shard):
    """``cache_mb``: later epochs draw from the kept decode (no record decoded twice), the
    batches and counters are those without it; a budget too small for a record keeps none."""
    for path, epochs in ((os.path.join(syn, "*.tar"), 3), (bad_shard[0], 2)):
        kw = dict(seed=4, num_epochs=epochs, **_small(batch_size=2))
        plain = Pipeline(path, **kw)
        want = _take(plain)
        records = len({(int(e), int(s)) for b in want for e, s in zip(b["epoch"], b["slot"]) if s >= 0})
        st = plain.stats()
        # Records read whole (bad JSON, JPEG or RLE included: their verdict is kept too).
        read = (records - st["unpaired_member"] - st["truncated_member"]) // epochs
        cached = Pipeline(path, cache_mb=1, **kw)
        _assert_same(want, _take(cached))
        assert cached.stats() == st
        info = cached.cache_info()
        assert info["records"] == read and info["hits"] == read * (epochs - 1), info
        assert 0 < info["bytes"] <= 2**20
        tiny = Pipeline(path, cache_mb=1e-5, **kw)
        _assert_same(want, _take(tiny))
        assert tiny.cache_info() == {"records": 0, "bytes": 0, "hits": 0}
    with pytest.raises(ValueError, match="cache_mb"):
        Pipeline(path, cache_mb=-1, **kw)


@pytest.mark.parametrize("cache_mb", [1, 1e-5])
def test_decoded_cache_decodes_a_record_in_two_map_calls_once(syn, monkeypatch, cache_mb):
    """The same record in two chunks mapped at once (the end of one epoch and the start of
    the next) is decoded by one call while the other waits for it; with no room in the cache
    the waiting call decodes it itself."""
    import threading
    import time

    import data.pipeline as pipeline

    calls = []

    def slow_decode(jpeg, payload, payload_kind, status, cfg):
        calls.append(jpeg)
        time.sleep(0.2)
        return np.zeros(64, np.uint8), Status.OK

    monkeypatch.setattr(pipeline, "decode_record", slow_decode)
    pipe = Pipeline(os.path.join(syn, "*.tar"), cache_mb=cache_mb, **_small())
    got = []
    threads = [
        threading.Thread(target=lambda: got.append(pipe._decode(int(Status.OK), b"jpeg", b"json", 0)))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 2 and all(st == Status.OK for _, st in got)
    if cache_mb == 1:
        assert calls == [b"jpeg"] and got[0][0] is got[1][0]
        assert pipe.cache_info()["hits"] == 1 and pipe.cache_info()["records"] == 1
    else:
        assert calls == [b"jpeg", b"jpeg"] and pipe.cache_info() == {"records": 0, "bytes": 0, "hits": 0}


def test_train_config_drop_bad_reaches_the_pipeline(bad_shard):
    """``data.drop_bad`` of a training config: the loop's batches hold only good records
    (the shard's 3 of 10 come round again, each epoch), without it bad slots stay empty."""
    from configs import load_config
    from train.loop import data_iterator

    path, expected = bad_shard
    good_ids = {i for st, i in expected if st == "ok"}
    for drop in (True, False):
        config = load_config(
            "tiny",
            [f"data.train_dir={path!r}", f"data.masks_per_image={K}", "data.global_batch_size=2"]
            + [f"data.drop_bad={drop}"],
        )
        batches, pipe = data_iterator(config, 0, S)
        assert pipe.drop_bad is drop
        got = [next(batches) for _ in range(3)]
        ok = np.concatenate([b["status"] for b in got]) == 0
        ids = {int(i) for b in got for i in b["image_id"]}
        if drop:
            assert ok.all() and ids == good_ids
            assert all(b["mask_valid"].any(axis=1).all() for b in got)
        else:
            assert not ok.all() and -1 in ids


def test_processes_get_disjoint_shards_covering_all(syn):
    tars = sorted(glob.glob(os.path.join(syn, "*.tar")))
    assert len(tars) == 4
    seen = []
    for p in range(2):
        refs = list(record_stream(tars, seed=1, process_index=p, process_count=2, num_epochs=1))
        seen.append({ref.shard for _, _, ref in refs})
        pipe = Pipeline(
            tars, seed=1, num_epochs=1, **dict(_small(batch_size=1), process_index=p, process_count=2)
        )
        ids = {int(b["image_id"][0]) for b in _take(pipe)}
        expect = {int(ref.key.rsplit("_", 1)[1]) for _, _, ref in refs}
        assert ids == expect
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(tars)
    with pytest.raises(ValueError):
        Pipeline(tars, batch_size=1, process_index=0, process_count=5)


def _axis(n_t, resized, original):
    c = (np.arange(n_t) + 0.5) * (S / n_t)
    c = c[c < resized]
    return np.minimum(np.floor(c * original / resized).astype(int), original - 1)


def test_targets_boxes_points_against_ground_truth(syn):
    batches = _take(Pipeline(os.path.join(syn, "*.tar"), num_epochs=1, seed=2, **_small(batch_size=2)))
    checked = 0
    for b in batches:
        for i in range(len(b["image_id"])):
            gt = generate_image(SEED, int(b["image_id"][i]) - 1, SHORT)
            H, W = b["original_hw"][i]
            nh, nw = b["resized_hw"][i]
            assert (H, W) == gt.image.shape[:2]
            assert max(nh, nw) == S and abs(nh / nw - H / W) < 0.05
            # Image: normalised resized JPEG, zero padding.
            img = b["image"][i]
            assert not img[nh:].any() and not img[:, nw:].any()
            rgb = img[:nh, :nw] * PIXEL_STD + PIXEL_MEAN
            assert rgb.min() > -1 and rgb.max() < 256
            small = np.asarray(
                __import__("PIL.Image").Image.fromarray(gt.image).resize((nw, nh), 2), np.float32
            )
            assert np.abs(rgb - small).mean() < 10
            rows, cols = _axis(R, nh, H), _axis(R, nw, W)
            n_valid = int(b["mask_valid"][i].sum())
            assert n_valid == min(K, gt.num_masks)
            assert not b["mask_valid"][i, n_valid:].any() and not b["masks"][i, n_valid:].any()
            sx, sy = nw / W, nh / H
            used = set()
            for k in range(n_valid):
                tgt = b["masks"][i, k]
                assert not tgt[len(rows) :].any() and not tgt[:, len(cols) :].any()
                box = b["boxes"][i, k]
                px, py = b["points"][i, k]
                found = False
                for j in range(gt.num_masks):
                    m = gt.mask(j)
                    ys, xs = np.nonzero(m)
                    gbox = np.array([xs.min() * sx, ys.min() * sy, xs.max() * sx, ys.max() * sy], np.float32)
                    if j in used or not np.allclose(box, gbox, atol=1e-3):
                        continue
                    if not np.array_equal(
                        tgt[: len(rows), : len(cols)], m[np.ix_(rows, cols)].astype(np.uint8)
                    ):
                        continue
                    # The point is the centre of a GT foreground pixel, in the resized frame.
                    x0, y0 = px / sx, py / sy
                    assert abs(x0 - round(x0)) < 1e-3 and abs(y0 - round(y0)) < 1e-3
                    assert m[int(round(y0)), int(round(x0))]
                    assert box[0] <= px <= box[2] and box[1] <= py <= box[3]
                    used.add(j)
                    found = True
                    break
                assert found, (int(b["image_id"][i]), k)
                checked += 1
    assert checked >= 30


def test_area_filter_drops_large_masks(tmp_path):
    s, jpg, js = _rec(SEED, 0)
    n = len(js["annotations"])
    big = np.zeros((s.height, s.width), np.uint8)
    big[: int(s.height * 0.96)] = 1  # 96 % of the image
    js["annotations"][0]["segmentation"]["counts"] = mask_utils.encode(np.asfortranarray(big))[
        "counts"
    ].decode()
    path = str(tmp_path / "sa_000000.tar")
    with tarfile.open(path, "w") as tar:
        _add(tar, "sa_1.jpg", jpg)
        _add(tar, "sa_1.json", json.dumps(js).encode())
    b = _take(Pipeline(path, num_epochs=1, **_small(batch_size=1, max_masks=64)))[0]
    assert int(b["mask_valid"][0].sum()) == n - 1
    full_h = (np.arange(R) + 0.5) * S / R < b["resized_hw"][0][0]
    # No target is the 96 % mask (which would fill almost all image rows).
    assert all(b["masks"][0, k][full_h].mean() < 0.9 for k in range(n - 1))


def test_train_loop_logs_source_counts(syn, tmp_path):
    """``data.train_dir`` as a list of (folder, weight) sources reaches the pipeline, and the
    training metrics count the samples of each source from step 0 (a resumed run too)."""
    from configs import load_config
    from train.loop import Tracker, data_iterator

    tars = sorted(glob.glob(os.path.join(syn, "*.tar")))
    for name, mine in (("manual", tars[:2]), ("auto", tars[2:])):
        os.makedirs(tmp_path / name)
        for t in mine:
            os.symlink(t, tmp_path / name / os.path.basename(t))
    mix = [(str(tmp_path / "manual"), 10), (str(tmp_path / "auto"), 1)]
    config = load_config(
        "tiny",
        [
            f"data.train_dir={mix!r}",
            f"data.masks_per_image={K}",
            "data.global_batch_size=2",
            "train.log_every=2",
        ],
    )

    def logged(start, steps):
        batches, pipe = data_iterator(config, start, S)
        assert pipe.source_names == ("manual", "auto") and pipe.weights == (10.0, 1.0)
        workdir = str(tmp_path / f"run{start}")
        os.makedirs(workdir)
        tracker = Tracker(config, workdir, pipe, start, start + steps, progress=False)
        drawn = []
        for step in range(start, start + steps):
            host = next(batches)
            drawn.append(host["source"])
            tracker.after_step(step + 1, host, {"loss": np.float32(1.0)}, must_save=False)
        tracker.close()
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            last = [json.loads(line) for line in f][-1]
        return np.concatenate(drawn), last

    drawn, last = logged(0, 6)
    assert last["step"] == 6 and set(drawn.tolist()) == {0, 1}
    assert [last["source_count/manual"], last["source_count/auto"]] == np.bincount(
        drawn, minlength=2
    ).tolist()
    _, resumed = logged(2, 4)  # steps 3-6 after a restart at step 2: the same totals
    assert resumed["step"] == 6
    assert resumed["source_count/manual"] == last["source_count/manual"]
    assert resumed["source_count/auto"] == last["source_count/auto"]
