"""Synthetic SA-1B generator and RLE helpers (no TensorFlow needed)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from data import rle
from data.synthetic import generate_image, main, sample_json, write_shards

SEED = 7
SHORT = 96


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn")
    paths = write_shards(str(out), num_images=6, images_per_shard=4, seed=SEED, short_side=SHORT)
    return paths


def _members(path):
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def test_generator_is_deterministic_and_seed_dependent():
    a, b = generate_image(SEED, 3, SHORT), generate_image(SEED, 3, SHORT)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    c = generate_image(SEED + 1, 3, SHORT)
    assert a.image.shape != c.image.shape or not np.array_equal(a.image, c.image)
    assert min(a.image.shape[:2]) == SHORT


def test_scene_has_nested_parts_and_occlusion():
    n_parts = 0
    for i in range(6):
        s = generate_image(SEED, i, SHORT)
        masks = s.masks
        assert masks.shape[0] >= 3
        assert (masks.reshape(len(masks), -1).sum(1) > 0).all()
        for k, p in enumerate(s.parent):
            if p >= 0:
                n_parts += 1
                # A part lies inside its whole object and is strictly smaller.
                assert not (masks[k] & ~masks[p]).any()
                assert masks[k].sum() < masks[p].sum()
    assert n_parts > 0


def test_shards_layout_and_json_schema(shards):
    assert [p.rsplit("/", 1)[1] for p in shards] == ["sa_000000.tar", "sa_000001.tar"]
    names = [n for n, _ in _members(shards[0])]
    assert names == [
        "sa_1.jpg",
        "sa_1.json",
        "sa_2.jpg",
        "sa_2.json",
        "sa_3.jpg",
        "sa_3.json",
        "sa_4.jpg",
        "sa_4.json",
    ]
    rec = json.loads(dict(_members(shards[1]))["sa_6.json"])
    assert set(rec) == {"image", "annotations"}
    assert rec["image"]["image_id"] == 6 and rec["image"]["file_name"] == "sa_6.jpg"
    ann = rec["annotations"][0]
    assert set(ann) == {
        "id",
        "segmentation",
        "bbox",
        "area",
        "predicted_iou",
        "stability_score",
        "crop_box",
        "point_coords",
    }
    assert isinstance(ann["segmentation"]["counts"], str)
    assert ann["segmentation"]["size"] == [rec["image"]["height"], rec["image"]["width"]]


def test_pycocotools_decodes_shards_to_generator_ground_truth(shards):
    seen = 0
    for path in shards:
        members = dict(_members(path))
        for name, payload in members.items():
            if not name.endswith(".json"):
                continue
            rec = json.loads(payload)
            img_id = rec["image"]["image_id"]
            gt = generate_image(SEED, img_id - 1, SHORT)
            jpg = np.asarray(Image.open(io.BytesIO(members[name[:-5] + ".jpg"])).convert("RGB"))
            assert jpg.shape == gt.image.shape
            assert np.abs(jpg.astype(int) - gt.image.astype(int)).mean() < 8  # JPEG q90
            assert len(rec["annotations"]) == gt.num_masks
            for k, ann in enumerate(rec["annotations"]):
                seg = dict(ann["segmentation"])
                seg["counts"] = seg["counts"].encode()
                m = mask_utils.decode(seg).astype(bool)
                assert np.array_equal(m, gt.mask(k))
                ys, xs = np.nonzero(m)
                assert ann["area"] == len(ys)
                assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min()]
                px, py = ann["point_coords"][0]
                assert m[int(py), int(px)]
                seen += 1
    assert seen > 20


def test_rle_helpers_match_pycocotools():
    s = generate_image(SEED, 1, SHORT)
    rng = np.random.default_rng(0)
    for k in range(s.num_masks):
        m = s.mask(k)
        h, w = m.shape
        enc = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        cnt = rle.decode_counts(enc["counts"].decode(), h, w)
        # Rebuild the mask from runs and compare with pycocotools' decode.
        flat = np.repeat(np.arange(len(cnt)) % 2, cnt).astype(bool)
        assert np.array_equal(flat.reshape(w, h).T, mask_utils.decode(enc).astype(bool))
        a, b = rle.fg_runs(cnt)
        assert rle.area(cnt) == m.sum() == int(mask_utils.area(enc))
        ys, xs = np.nonzero(m)
        assert rle.bbox_xyxy(a, b, h) == (xs.min(), ys.min(), xs.max(), ys.max())
        for _ in range(5):
            y, x = rle.sample_point(a, b, h, rng)
            assert m[y, x]
        rows = np.sort(rng.integers(0, h, 17))  # with repeats (upsampling)
        cols = np.sort(rng.integers(0, w, 23))
        assert np.array_equal(rle.sample_grid([(a, b)], h, rows, cols)[0], m[np.ix_(rows, cols)])


def test_sample_point_is_uniform():
    m = np.zeros((10, 10), np.uint8)
    m[1, 1] = 1
    m[5:7, 3] = 1
    enc = mask_utils.encode(np.asfortranarray(m))
    a, b = rle.fg_runs(rle.decode_counts(enc["counts"], 10, 10))
    rng = np.random.default_rng(1)
    hits = np.zeros((10, 10))
    for _ in range(3000):
        hits[rle.sample_point(a, b, 10, rng)] += 1
    assert hits.sum() == hits[m.astype(bool)].sum()
    assert np.allclose(hits[m.astype(bool)] / 3000, 1 / 3, atol=0.04)


@pytest.mark.parametrize("bad", ["", "a~", "0", "\x7f\x7f", "1"])
def test_rle_rejects_malformed(bad):
    with pytest.raises(rle.RleError):
        rle.decode_counts(bad, 4, 4)


def test_cli_writes_shards_in_parallel_byte_identical(tmp_path):
    args = ["--num-images", "3", "--images-per-shard", "2", "--seed", "3", "--short-side", "64"]
    main(["--out", str(tmp_path / "two"), "--workers", "2"] + args)
    names = ["sa_000000.tar", "sa_000001.tar"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    js = json.loads(dict(_members(str(tmp_path / "two" / "sa_000001.tar")))["sa_3.json"])
    assert js == sample_json(generate_image(3, 2, 64), 3)
    write_shards(str(tmp_path / "one"), 3, 2, seed=3, short_side=64)
    for n in names:  # the shards of two processes are those of one
        assert (tmp_path / "one" / n).read_bytes() == (tmp_path / "two" / n).read_bytes()


def test_sa1b_size_generation_shape_and_mask_count():
    # Its speed is a benchmark figure (`python -m benchmarks.run pipeline-cpu`), not an assertion here.
    s = generate_image(0, 0, 1500, aspect=1.5)
    assert s.image.shape == (1500, 2250, 3) or s.image.shape == (2250, 1500, 3)
    assert 70 <= s.num_masks <= 160


def test_import_data_does_not_import_tensorflow():
    code = (
        "import sys, data, data.sa1b, data.rle, data.preprocess, data.synthetic, data.status;"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_batch_format_and_synthetic_batches_import_without_jax():
    code = (
        "import sys, data.batch, data.synthetic_batch, data.pipeline;"
        "b = data.synthetic_batch.make_batch(1, 2, 3, 64);"
        "assert {k: (v.dtype, v.ndim) for k, v in b.items()} == "
        "{k: (d, data.batch.batch_rank(k)) for k, (d, _) in data.batch.FIELDS.items()};"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('jax', 'tensorflow')]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
