"""Edge protocol (paper 7.2, D.2): edge maps from mask logits, edge NMS, BSDS matching
and ODS/OIS/AP/R50 on constructed edge maps with known precision and recall."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from sam_jax.evaluation.edges import (
    bsds_metrics,
    edge_map,
    edge_nms,
    load_edge_dataset,
    mask_edges,
    match_counts,
    thresholds,
)

H, W = 300, 400  # diagonal 500 -> tolerance 3.75 px


def _line(x, y0=10, y1=50, h=H, w=W):
    m = np.zeros((h, w), bool)
    m[y0:y1, x] = True
    return m


def _gt():
    return _line(20) | _line(100)  # 80 human edge pixels


def test_thresholds_are_bsds():
    t = thresholds(99)
    assert len(t) == 99 and t[0] == pytest.approx(0.01) and t[-1] == pytest.approx(0.99)


def test_matching_tolerance_and_one_to_one():
    gt = _line(20)[None]
    near = match_counts(_line(23).astype(float), gt)  # 3 px away: within 3.75
    far = match_counts(_line(25).astype(float), gt)  # 5 px away: outside
    assert near["cntP"][0] == near["cntR"][0] == 40 and near["sumR"][0] == 40
    assert far["cntP"][0] == far["cntR"][0] == 0 and far["sumP"][0] == 40
    double = match_counts((_line(19) | _line(21)).astype(float), gt, thin=False)
    assert double["sumP"][0] == 80 and double["cntP"][0] == 40 and double["cntR"][0] == 40


def test_several_human_maps_sum_recall_and_share_precision():
    e = _line(22).astype(float)
    c = match_counts(e, np.stack([_line(20), _line(20) | _line(200)]))
    assert c["sumR"][0] == 120 and c["cntR"][0] == 80  # 40 matched in each map
    assert c["sumP"][0] == 40 and c["cntP"][0] == 40


def test_ods_ois_ap_r50_on_known_precision_recall():
    # predictions: the line at x=20 shifted by 3 px with score 0.9, a far line with 0.6
    e = np.zeros((H, W))
    e[_line(23)] = 0.9
    e[_line(300)] = 0.6
    c = match_counts(e, _gt()[None])
    t = thresholds(99)
    low, mid, high = t <= 0.6, (t > 0.6) & (t <= 0.9), t > 0.9
    np.testing.assert_array_equal(c["sumP"][low], 80)
    np.testing.assert_array_equal(c["cntP"][low], 40)
    np.testing.assert_array_equal(c["sumP"][mid], 40)
    np.testing.assert_array_equal(c["cntP"][mid], 40)
    np.testing.assert_array_equal(c["sumP"][high], 0)
    np.testing.assert_array_equal(c["cntR"][~high], 40)
    np.testing.assert_array_equal(c["sumR"], 80)
    m = bsds_metrics([c])
    # (P, R): (0.5, 0.5) at t <= 0.6, (1, 0.5) up to 0.9, (0, 0) above
    assert m["ODS"] == pytest.approx(2 / 3) and m["OIS"] == pytest.approx(2 / 3)
    assert m["ODS_precision"] == pytest.approx(1.0) and m["ODS_recall"] == pytest.approx(0.5)
    # AP: first occurrence of each recall: R=0 -> P=0, R=0.5 -> P=0.5 (t=0.01); P = R on
    # [0, 0.5], nothing above: sum(i/100, i=0..50) / 100
    assert m["AP"] == pytest.approx(sum(i / 100 for i in range(51)) / 100)
    assert m["R50"] == pytest.approx(0.5)
    # two images: one perfect, one as above -> OIS takes each image's best threshold
    perfect = match_counts(_gt().astype(float) * 0.8, _gt()[None])
    m2 = bsds_metrics([c, perfect])
    # OIS counts: image 1 at t in (0.6, 0.9]: 40/40 P, 40/80 R; image 2: 80/80, 80/80
    p, r = 120 / 120, 120 / 160
    assert m2["OIS"] == pytest.approx(2 * p * r / (p + r))
    assert m2["ODS"] == pytest.approx(2 * p * r / (p + r))


def test_edge_map_and_nms_from_mask_logits():
    yy, xx = np.mgrid[:80, :100]
    # a soft square (logit ramps of width ~4 px) with a hole: the hole edge is not outer
    d = np.minimum.reduce([yy - 20, 60 - yy, xx - 30, 80 - xx]).astype(np.float32)
    hole = (np.abs(yy - 40) < 6) & (np.abs(xx - 55) < 6)
    logits = np.where(hole, -5.0, d)
    e = mask_edges(logits)
    # mask rows 21..59, cols 31..79; hole rows/cols 35..45 around (40, 55)
    assert e[21, 55] > 0.1 and e[59, 40] > 0.1 and e[40, 31] > 0.1  # outer boundary
    assert e[34, 55] == 0 and e[46, 55] == 0 and e[40, 49] == 0  # hole rim: not outer
    assert e[22:59, 32:79].max() == 0  # interior
    em = edge_map([{"logits": logits}, {"logits": logits - 100}], logits.shape)
    assert em.max() == pytest.approx(1.0)
    thin = edge_nms(em)
    cols = np.flatnonzero(thin[:, 55] > 0)
    assert len(cols) == 2 and set(cols) <= {20, 21, 22, 58, 59, 60}  # one pixel per crossing


def test_edge_dataset_png_and_mat(tmp_path):
    from scipy.io import savemat

    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "img" / "a.jpg")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "img" / "b.jpg")
    for k in range(2):
        Image.fromarray(_line(5 + k, 0, 30, 30, 40).astype(np.uint8) * 255).save(
            tmp_path / "gt" / f"a_{k}.png"
        )
    gt = np.empty((1, 3), dtype=object)
    for k in range(3):
        gt[0, k] = {
            "Boundaries": _line(10 + k, 0, 30, 30, 40).astype(np.uint8),
            "Segmentation": np.ones((30, 40), np.uint16),
        }
    savemat(tmp_path / "gt" / "b.mat", {"groundTruth": gt})
    ds = load_edge_dataset(str(tmp_path / "img"), str(tmp_path / "gt"))
    assert len(ds) == 2
    a, b = ds.images
    assert a.load_edges().shape == (2, 30, 40) and a.load_edges()[1, :, 6].all()
    assert b.load_edges().shape == (3, 30, 40) and b.load_edges()[2, :, 12].all()


def test_amg_returns_logits_for_edges():
    from configs.tiny import TINY
    from sam_jax import build_sam
    from sam_jax.evaluation.edges import EdgeSettings, edge_generator

    gen = edge_generator(build_sam(TINY, seed=1), EdgeSettings(points_per_side=4))
    image = (np.random.default_rng(0).integers(0, 255, (48, 64, 3))).astype(np.uint8)
    recs = gen.generate(image)
    assert gen.point_grids[0].shape == (16, 2) and gen.pred_iou_thresh == 0.0
    assert len(recs) > 0
    from sam_jax.amg import rle_to_mask

    for r in recs:
        assert r["logits"].shape == (48, 64)
        np.testing.assert_array_equal(r["logits"] > 0, rle_to_mask(r["segmentation"]))
    e = edge_map(recs, image.shape[:2])
    assert e.max() == pytest.approx(1.0) or e.max() == 0.0


def test_edges_protocol_end_to_end_with_stub_generator(tmp_path):
    """Masks whose soft boundaries are the human edges score ODS = OIS = 1; results files."""
    from eval_stubs import ListGenerator

    from sam_jax.evaluation import evaluate

    h, w = 120, 160
    yy, xx = np.mgrid[:h, :w]
    (tmp_path / "img").mkdir()
    (tmp_path / "gt").mkdir()
    recs, gts = [], []
    for i, (y0, x0) in enumerate([(20, 30), (40, 60)]):
        d = np.minimum.reduce([yy - y0, y0 + 50 - yy, xx - x0, x0 + 70 - xx]).astype(np.float32)
        mask = d > 0
        gt = mask & ~ndimage.binary_erosion(mask, border_value=1)
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(gt.astype(np.uint8) * 255).save(tmp_path / "gt" / f"{i}.png")
        recs.append([{"logits": d}])
        gts.append(gt)
    ds = load_edge_dataset(str(tmp_path / "img"), str(tmp_path / "gt"))
    doc = evaluate("edges", ds, ListGenerator(recs), out=str(tmp_path / "out"), progress=False)
    m = doc["metrics"]
    assert m["ODS"] > 0.97 and m["OIS"] > 0.97 and m["num_images"] == 2
    assert len(m["curve"]["recall"]) == 99 and m["R50"] > 0.97
    assert (tmp_path / "out" / "precision_recall.png").exists()
    assert "| ODS | OIS | AP | R50 |" in (tmp_path / "out" / "results.md").read_text()
