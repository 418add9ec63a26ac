"""Dataset statistics (paper section 5): the numbers of ``python -m data.stats`` on a corpus
whose masks are known by construction (squares, an L-shape, a bar spanning columns, a
full-image mask, an image without masks, bad records), the RLE geometry against a
pixel-by-pixel computation, and a two-corpus comparison run on two worker processes."""

from __future__ import annotations

import io
import json
import math
import os
import tarfile

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.spatial import ConvexHull

from data import rle
from data.stats import CENTRE_GRID, main, mask_geometry
from data.synthetic import generate_image, write_shards


def _rle(m: np.ndarray) -> dict:
    enc = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(v) for v in enc["size"]], "counts": enc["counts"].decode("ascii")}


def _record(image_id: int, h: int, w: int, masks) -> bytes:
    anns = [{"id": i, "segmentation": _rle(m)} for i, m in enumerate(masks)]
    rec = {"image": {"image_id": image_id, "height": h, "width": w, "file_name": f"sa_{image_id}.jpg"}}
    return json.dumps(dict(rec, annotations=anns)).encode()


def _add(tar, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _jpeg(h: int, w: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, "JPEG")
    return buf.getvalue()


def _box(h, w, rows, cols):
    m = np.zeros((h, w), bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


# Image 1 (40 x 60): a 10x10 square, a 20x20 square without its 10x10 top-right corner (an
# L of area 300 whose hull is 400 - 50 = 350), a 5-column bar of full height (one RLE run
# over five columns). Image 2 (30 x 30): no mask. Image 3 (30 x 30): the whole image.
SQUARE = _box(40, 60, (10, 20), (20, 30))
L_SHAPE = _box(40, 60, (20, 40), (0, 20)) & ~_box(40, 60, (20, 30), (10, 20))
BAR = _box(40, 60, (0, 40), (50, 55))
FULL = np.ones((30, 30), bool)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("known")
    path = str(d / "sa_000000.tar")
    with tarfile.open(path, "w") as tar:
        for image_id, h, w, masks in (
            (1, 40, 60, [SQUARE, L_SHAPE, BAR]),
            (2, 30, 30, []),
            (3, 30, 30, [FULL]),
        ):
            _add(tar, f"sa_{image_id}.jpg", _jpeg(h, w))
            _add(tar, f"sa_{image_id}.json", _record(image_id, h, w, masks))
        _add(tar, "sa_4.jpg", _jpeg(30, 30))
        _add(tar, "sa_4.json", b"{not json")
        _add(tar, "sa_5.jpg", _jpeg(30, 30))
        _add(tar, "sa_5.json", _record(5, 30, 30, [np.ones((20, 30), bool)]))  # RLE of another size
        _add(tar, "sa_6.json", _record(6, 30, 30, [FULL]))  # no image
    return path


def test_known_corpus_numbers(corpus, tmp_path):
    out = str(tmp_path / "out")
    assert main([corpus, "--out", out, "--workers", "1", "--labels", "known"]) == 0
    (c,) = json.load(open(os.path.join(out, "stats.json")))["corpora"]
    assert (c["label"], c["shards"], c["images"], c["masks"], c["empty_masks"]) == ("known", 1, 3, 4, 0)
    assert c["skipped"] == {"bad_json": 1, "rle_size_mismatch": 1, "unpaired_member": 1}
    mpi = c["masks_per_image"]
    assert mpi["histogram"] == {"0": 1, "1": 1, "3": 1}
    assert (mpi["mean"], mpi["median"], mpi["max"]) == (pytest.approx(4 / 3), 1.0, 3)
    assert mpi["paper_bins"] == {"0": 1, "1-10": 2, "11-50": 0, "51-100": 0, "101-200": 0, ">200": 0}
    # relative size sqrt(area / image area): 100, 300, 200 of 2400 pixels, and 1
    sizes = [math.sqrt(100 / 2400), math.sqrt(300 / 2400), math.sqrt(200 / 2400), 1.0]
    assert c["relative_size"]["mean"] == pytest.approx(np.mean(sizes))
    want = np.zeros(100, int)
    for v in sizes:
        want[min(int(v * 100), 99)] += 1
    assert c["relative_size"]["histogram"] == want.tolist()
    # concavity: 0 for the rectangles, 1 - 300 / 350 = 1/7 for the L
    assert c["concavity"]["mean"] == pytest.approx((1 / 7) / 4)
    assert c["concavity"]["histogram"][0] == 3 and c["concavity"]["histogram"][14] == 1
    assert sum(c["concavity"]["histogram"]) == 4
    # centroids (pixel centres) / image size: square (25, 15), L ((4000-1500)/300, (12000-2500)/300),
    # bar (52.5, 20) in 60 x 40; the full 30 x 30 image (0.5, 0.5)
    xs = [25 / 60, 2500 / 300 / 60, 52.5 / 60, 0.5]
    ys = [15 / 40, 9500 / 300 / 40, 20 / 40, 0.5]
    assert c["centre"]["mean_x"] == pytest.approx(np.mean(xs))
    assert c["centre"]["mean_y"] == pytest.approx(np.mean(ys))
    grid = np.zeros((CENTRE_GRID, CENTRE_GRID), int)
    for x, y in zip(xs, ys):
        grid[int(y * CENTRE_GRID), int(x * CENTRE_GRID)] += 1
    assert np.array_equal(np.asarray(c["centre"]["histogram"]), grid)
    for f in ("masks_per_image.png", "relative_size.png", "concavity.png", "centres.png"):
        assert Image.open(os.path.join(out, f)).size[0] > 100


def test_geometry_from_runs_matches_pixels():
    """Area, centroid and hull area from the RLE runs equal those of the pixels, on the
    overlapping, occluded, nested masks of the synthetic generator and the masks above."""
    masks = list(generate_image(4, 0, 96).masks) + [SQUARE, L_SHAPE, BAR, FULL]
    assert len(masks) >= 9
    for m in masks:
        h, _ = m.shape
        g = mask_geometry(rle.decode_counts(_rle(m)["counts"], *m.shape), h)
        ys, xs = np.nonzero(m)
        if len(xs) == 0:
            assert g is None
            continue
        corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
        assert g.area == len(xs)
        assert (g.cx, g.cy) == (pytest.approx(xs.mean() + 0.5), pytest.approx(ys.mean() + 0.5))
        assert g.hull_area == pytest.approx(ConvexHull(corners).volume)


def test_compare_two_corpora_on_two_workers(corpus, tmp_path):
    syn = tmp_path / "syn"
    write_shards(str(syn), num_images=4, images_per_shard=2, seed=3, short_side=48)
    out = str(tmp_path / "cmp")
    assert main([corpus, "--compare", str(syn), "--workers", "2", "--chunk", "2", "--out", out]) == 0
    a, b = json.load(open(os.path.join(out, "stats.json")))["corpora"]
    assert (a["images"], a["masks"], b["images"], b["shards"]) == (3, 4, 4, 2)
    assert b["label"] == "syn" and b["masks"] == sum(
        int(k) * v for k, v in b["masks_per_image"]["histogram"].items()
    )
    single = str(tmp_path / "single")
    main([corpus, "--out", single, "--workers", "1"])
    assert json.load(open(os.path.join(single, "stats.json")))["corpora"][0] == a  # merge = one pass
    assert (
        Image.open(os.path.join(out, "centres.png")).size[0]
        > Image.open(os.path.join(single, "centres.png")).size[0]
    )


def test_missing_shards_are_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "none*.tar"), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "no SA-1B shard matches" in capsys.readouterr().err
