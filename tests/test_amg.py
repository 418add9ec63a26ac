"""Automatic mask generation: building blocks and the whole generator vs the official."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.reference_sam import official_and_ours, torch
from configs.tiny import TINY

skimage_data = pytest.importorskip("skimage.data")
segment_anything = pytest.importorskip("segment_anything")
ref_amg = pytest.importorskip("segment_anything.utils.amg")
tv_ops = pytest.importorskip("torchvision.ops")
pytest.importorskip("cv2")  # the official small-region cleanup needs OpenCV

from sam_jax import SamAutomaticMaskGenerator, amg  # noqa: E402


def _blobs(rng, n, h, w):
    """``(n, h, w)`` bool masks: random rectangles with random holes and specks."""
    masks = np.zeros((n, h, w), bool)
    for m in masks:
        y0, x0 = rng.integers(0, h - 4), rng.integers(0, w - 4)
        m[y0 : rng.integers(y0 + 1, h + 1), x0 : rng.integers(x0 + 1, w + 1)] = True
        m ^= rng.random((h, w)) < 0.03
    masks[0] = False  # an empty mask
    return masks


def test_grids_and_crops_match_official():
    for n, layers, scale in [(32, 0, 1), (8, 2, 2), (5, 1, 1)]:
        mine = amg.build_all_layer_point_grids(n, layers, scale)
        theirs = ref_amg.build_all_layer_point_grids(n, layers, scale)
        assert len(mine) == len(theirs)
        for a, b in zip(mine, theirs):
            np.testing.assert_allclose(a, b)
    for size, layers in [((512, 512), 1), ((300, 451), 2), ((1500, 2250), 3)]:
        assert amg.generate_crop_boxes(size, layers, 512 / 1500) == ref_amg.generate_crop_boxes(
            size, layers, 512 / 1500
        )


def test_rle_matches_official_and_pycocotools():
    from pycocotools import mask as mask_utils

    masks = _blobs(np.random.default_rng(0), 6, 37, 53)
    masks[1] = True
    mine = amg.mask_to_rle(masks)
    assert mine == ref_amg.mask_to_rle_pytorch(torch.as_tensor(masks))
    for m, rle in zip(masks, mine):
        np.testing.assert_array_equal(amg.rle_to_mask(rle), m)
        assert amg.area_from_rle(rle) == m.sum()
        coco = amg.coco_encode_rle(rle)
        assert isinstance(coco["counts"], str)
        decoded = mask_utils.decode(dict(coco, counts=coco["counts"].encode()))
        np.testing.assert_array_equal(decoded.astype(bool), m)


def test_boxes_and_stability_match_official():
    rng = np.random.default_rng(1)
    masks = _blobs(rng, 8, 40, 30)
    np.testing.assert_array_equal(
        np.asarray(amg.batched_mask_to_box(masks)),
        ref_amg.batched_mask_to_box(torch.as_tensor(masks)).numpy(),
    )
    logits = rng.normal(size=(5, 40, 30)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(amg.calculate_stability_score(logits, 0.0, 0.5)),
        ref_amg.calculate_stability_score(torch.as_tensor(logits), 0.0, 0.5).numpy(),
        rtol=1e-6,
    )


@pytest.mark.parametrize("seed", range(4))
def test_nms_matches_torchvision(seed):
    rng = np.random.default_rng(seed)
    n = [5, 70, 300, 1000][seed]
    xy = rng.integers(0, 200, (n, 2))
    boxes = np.concatenate([xy, xy + rng.integers(0, 120, (n, 2))], 1).astype(np.float32)
    boxes[: n // 5] = boxes[0]  # identical boxes
    scores = rng.integers(0, 4, n).astype(np.float32)  # many ties
    for thresh in (0.0, 0.3, 0.7, 1.0):
        mine = amg.box_nms(boxes, scores, thresh)
        theirs = tv_ops.batched_nms(
            torch.as_tensor(boxes), torch.as_tensor(scores), torch.zeros(n), thresh
        ).numpy()
        assert sorted(mine.tolist()) == sorted(theirs.tolist())
        assert np.all(np.diff(scores[mine]) <= 0)  # highest score first


def test_remove_small_regions_matches_official():
    rng = np.random.default_rng(2)
    for m in _blobs(rng, 6, 60, 45):
        for mode in ("holes", "islands"):
            for area in (1, 5, 40):
                mine, changed = amg.remove_small_regions(m, area, mode)
                theirs, their_changed = ref_amg.remove_small_regions(m, area, mode)
                assert changed == their_changed
                np.testing.assert_array_equal(mine, theirs)


def test_uncrop_and_edge_filter_match_official():
    boxes = np.array([[0, 0, 50, 50], [25, 30, 99, 100], [60, 10, 80, 30]])
    crop, orig = [100, 50, 200, 150], [0, 0, 200, 300]
    np.testing.assert_array_equal(
        amg.is_box_near_crop_edge(boxes, crop, orig),
        ref_amg.is_box_near_crop_edge(torch.as_tensor(boxes), crop, orig).numpy(),
    )
    masks = _blobs(np.random.default_rng(3), 2, 100, 100)
    np.testing.assert_array_equal(
        amg.uncrop_masks(masks, crop, 300, 200),
        ref_amg.uncrop_masks(torch.as_tensor(masks), crop, 300, 200).numpy(),
    )


# Random weights give large, noisy masks whose boxes are nearly all the full
# image, so any NMS threshold below 1 leaves a single mask; thresholds of 1.0 keep
# the comparison meaningful (NMS itself is compared with torchvision above).
SETTINGS = {
    "grid": dict(points_per_side=12),
    "crops+cleanup": dict(points_per_side=8, crop_n_layers=1, min_mask_region_area=100),
}
COMMON = dict(
    pred_iou_thresh=0.5,
    stability_score_thresh=0.75,
    stability_score_offset=0.05,
    box_nms_thresh=1.0,
    crop_nms_thresh=1.0,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return official_and_ours(TINY, tmp_path_factory.mktemp("ckpt"), seed=3)


@pytest.mark.parametrize("name", list(SETTINGS))
def test_generator_matches_official(models, name):
    official, ours = models
    image = skimage_data.astronaut()
    kw = dict(COMMON, **SETTINGS[name])
    with torch.no_grad():
        ref = segment_anything.SamAutomaticMaskGenerator(official, **kw).generate(image)
    mine = SamAutomaticMaskGenerator(ours, **kw).generate(image)
    assert len(ref) >= 20
    assert abs(len(mine) - len(ref)) <= 0.02 * len(ref)
    theirs = np.stack([r["segmentation"] for r in ref])
    worst = 1.0
    for rec in mine:
        m = rec["segmentation"]
        assert m.shape == image.shape[:2] and m.dtype == bool
        iou = (theirs & m).sum((1, 2)) / (theirs | m).sum((1, 2))
        j = int(np.argmax(iou))
        worst = min(worst, float(iou[j]))
        assert iou[j] >= 0.95
        assert abs(rec["predicted_iou"] - ref[j]["predicted_iou"]) < 1e-3
        assert rec["area"] == m.sum()
        x, y, w, h = rec["bbox"]
        ys, xs = np.nonzero(m)
        assert [x, y, x + w, y + h] == [xs.min(), ys.min(), xs.max(), ys.max()]
        assert rec["crop_box"] == ref[j]["crop_box"]
    print(f"AMG {name}: ours {len(mine)} theirs {len(ref)} min matched IoU {worst:.6f}")


def test_output_modes_and_records(models):
    from pycocotools import mask as mask_utils

    _, ours = models
    image = skimage_data.chelsea()
    kw = dict(COMMON, points_per_side=4)
    binary = SamAutomaticMaskGenerator(ours, output_mode="binary_mask", **kw).generate(image)
    rle = SamAutomaticMaskGenerator(ours, output_mode="uncompressed_rle", **kw).generate(image)
    coco = SamAutomaticMaskGenerator(ours, output_mode="coco_rle", **kw).generate(image)
    assert len(binary) == len(rle) == len(coco) > 0
    keys = {"segmentation", "area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"}
    for b, r, c in zip(binary, rle, coco):
        assert set(b) == set(r) == set(c) == keys
        np.testing.assert_array_equal(amg.rle_to_mask(r["segmentation"]), b["segmentation"])
        decoded = mask_utils.decode(dict(c["segmentation"], counts=c["segmentation"]["counts"].encode()))
        np.testing.assert_array_equal(decoded.astype(bool), b["segmentation"])
        assert b["crop_box"] == [0, 0, image.shape[1], image.shape[0]]
        assert len(b["point_coords"]) == 1 and len(b["point_coords"][0]) == 2


def test_generator_rejects_bad_arguments(models):
    _, ours = models
    with pytest.raises(ValueError, match="output_mode"):
        SamAutomaticMaskGenerator(ours, output_mode="png")
    with pytest.raises(ValueError, match="exactly one"):
        SamAutomaticMaskGenerator(ours, points_per_side=None)
    with pytest.raises(ValueError, match="point grids"):
        SamAutomaticMaskGenerator(
            ours, points_per_side=None, point_grids=[amg.build_point_grid(4)], crop_n_layers=1
        )
    with pytest.raises(ValueError, match="dtype"):
        SamAutomaticMaskGenerator(ours, points_per_side=2).generate(np.zeros((8, 8, 3), np.float32))


def test_generator_decodes_through_the_predictor_batched_api(models, monkeypatch):
    from sam_jax.predictor import compile_counts

    _, ours = models
    image = skimage_data.chelsea()
    kw = dict(COMMON, points_per_side=4)
    gen = SamAutomaticMaskGenerator(ours, points_per_batch=8, **kw)
    calls = []
    real = gen.predictor.predict_torch

    def spy(coords, labels, *args, **kwargs):
        calls.append(np.shape(coords))
        return real(coords, labels, *args, **kwargs)

    monkeypatch.setattr(gen.predictor, "predict_torch", spy)
    small = gen.generate(image)
    assert calls == [(8, 1, 2), (8, 1, 2)]  # 16 grid points, 8 per call
    counts = compile_counts()
    again = gen.generate(image)
    assert compile_counts() == counts  # a second image of the same size compiles nothing
    whole = SamAutomaticMaskGenerator(ours, points_per_batch=16, **kw).generate(image)
    assert len(small) == len(again) == len(whole) > 0
    for a, b in zip(small, whole):
        np.testing.assert_array_equal(a["segmentation"], b["segmentation"])
        assert abs(a["predicted_iou"] - b["predicted_iou"]) < 1e-5
