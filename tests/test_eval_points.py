"""Point protocol (paper 7.1, D.1): click rules, worked cases with stub models, and
parity with a reference loop on the official SamPredictor."""

from __future__ import annotations

import numpy as np
import pytest
from eval_stubs import GTPredictor
from PIL import Image, ImageDraw

from sam_jax.evaluation.points import (
    PointSettings,
    center_click,
    evaluate_image,
    farthest_from_boundary,
    mask_iou,
    next_click,
    noc,
    summarize,
)


def _rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


# ----------------------------------------------------------------------------- click rules


def test_center_of_square_is_its_centre():
    assert center_click(_rect(64, 96, 10, 31, 20, 41)) == (20, 30)  # 21x21 square


def test_center_of_rectangle_lies_on_its_medial_segment():
    # 21 rows x 41 columns: distance 11 along the central row, from column 30 to 50.
    m = _rect(64, 96, 10, 31, 20, 61)
    y, x = center_click(m)
    assert y == 20 and 30 <= x <= 50 and x == 30  # first maximum in row-major order


def test_center_counts_image_border_as_boundary():
    m = _rect(40, 40, 0, 40, 0, 11)  # an 11-px band along the left border
    dist, (y, x) = farthest_from_boundary(m)
    assert x == 5 and dist == 6.0


def test_center_of_annulus_lies_on_its_mid_circle():
    yy, xx = np.mgrid[:101, :101]
    r = np.hypot(yy - 50, xx - 50)
    ring = (r >= 15) & (r <= 35)
    y, x = center_click(ring)
    assert ring[y, x]
    assert abs(np.hypot(y - 50, x - 50) - 25.0) <= 1.0


def test_next_click_false_negative():
    gt = _rect(60, 60, 10, 31, 10, 51)  # 21 x 41
    pred = _rect(60, 60, 10, 31, 10, 20)  # only the left 10 columns
    (y, x), label = next_click(gt, pred)
    # FN region: rows 10..30, cols 20..50 (21 x 31): farthest at row 20, first of cols 30..40.
    assert label == 1 and y == 20 and x == 30


def test_next_click_false_positive():
    gt = _rect(60, 60, 10, 21, 10, 21)
    pred = gt | _rect(60, 60, 35, 56, 30, 51)  # an extra 21 x 21 square
    (y, x), label = next_click(gt, pred)
    assert label == 0 and (y, x) == (45, 40)


def test_next_click_tie_goes_to_false_positive_and_clicked_pixels_are_skipped():
    base = _rect(60, 60, 0, 60, 0, 30)
    gt = base | _rect(60, 60, 10, 15, 40, 45)  # FN: a 5x5 square (distance 3 at its centre)
    pred = base | _rect(60, 60, 40, 45, 40, 45)  # FP: a 5x5 square
    (y, x), label = next_click(gt, pred)
    assert label == 0 and (y, x) == (42, 42)
    (y, x), label = next_click(gt, pred, clicked=[(42, 42)])
    assert label == 1 and (y, x) == (12, 42)  # FP's max dropped below FN's
    # a perfect prediction: background click at (0, 0), as RITM
    assert next_click(gt, gt) == ((0, 0), 0)


def test_noc_and_iou_helpers():
    iou = np.array([[0.5, 0.86, 0.95], [0.91, 0.2, 0.2], [0.1, 0.2, 0.3]])
    np.testing.assert_array_equal(noc(iou, 0.85), [2, 1, 3])
    np.testing.assert_array_equal(noc(iou, 0.90), [3, 1, 3])
    a, b = _rect(10, 10, 0, 4, 0, 4), _rect(10, 10, 2, 6, 0, 4)
    assert mask_iou(a, b) == pytest.approx(8 / 24)


# ----------------------------------------------------------------------------- stub models


def _scene():
    h, w = 80, 120
    masks = np.stack([_rect(h, w, 5, 26, 5, 26), _rect(h, w, 40, 75, 10, 60), _rect(h, w, 10, 50, 70, 110)])
    image = np.zeros((h, w, 3), np.uint8)
    return image, masks


@pytest.mark.parametrize("batch", [2, 8])
def test_gt_stub_scores_one_with_noc_one(batch, monkeypatch):
    import sam_jax.evaluation.points as points

    image, masks = _scene()
    settings = PointSettings(masks_per_batch=batch)
    stub = GTPredictor(masks)
    corrections = []
    real_next_click = points.next_click
    monkeypatch.setattr(points, "next_click", lambda *a: corrections.append(1) or real_next_click(*a))
    res = evaluate_image(stub, image, masks, settings)
    # corrective clicks are computed for the 3 real masks only (8 each), not the padding
    # rows of a batch, which repeat the last real row's clicks
    assert len(corrections) == 3 * 8
    n_last = 3 - batch * ((3 - 1) // batch)  # real rows in the last batch
    for call in stub.calls[-settings.max_clicks :]:
        for key in ("points", "labels"):
            pad = call[key][n_last:]
            np.testing.assert_array_equal(pad, np.broadcast_to(call[key][n_last - 1], pad.shape))
    assert res["iou"].shape == (3, 9)
    np.testing.assert_array_equal(res["iou"], 1.0)
    m = summarize(res["iou"], res["iou_oracle"], res["area"], settings)
    assert m["miou"] == {"1": 1.0, "2": 1.0, "3": 1.0, "5": 1.0, "9": 1.0}
    assert m["miou_oracle_1"] == 1.0 and m["noc"] == {"85": 1.0, "90": 1.0}
    # every call decodes a full batch, multimask only at the first click, mask prompt after
    assert all(c["points"].shape[0] == batch for c in stub.calls)
    assert [c["multimask_output"] for c in stub.calls[:2]] == [True, False]
    assert stub.calls[0]["mask_input"] is None and stub.calls[1]["mask_input"].shape[1] == 1
    # the centre click of the first mask (21x21 square at rows/cols 5..25) is (15, 15)
    assert tuple(res["clicks"][0, 0]) == (15, 15, 1)
    # keep_masks (the demo's pictures): the prediction after every click, same scores
    kept = evaluate_image(GTPredictor(masks), image, masks, settings, keep_masks=True)
    assert kept["masks"].shape == (3, 9) + masks.shape[1:] and "masks" not in res
    np.testing.assert_array_equal(kept["masks"], np.repeat(masks[:, None], 9, axis=1))
    np.testing.assert_array_equal(kept["iou"], res["iou"])


def test_shifted_stub_scores_hand_computed_iou():
    image, masks = _scene()
    k = 3
    settings = PointSettings(clicks=(1, 3))
    res = evaluate_image(GTPredictor(masks, shift=k), image, masks, settings)
    # A w-wide mask shifted by k columns: IoU = (w - k) / (w + k).
    expected = np.array([(21 - k) / (21 + k), (50 - k) / (50 + k), (40 - k) / (40 + k)])
    np.testing.assert_allclose(res["iou"], np.repeat(expected[:, None], 3, axis=1))
    m = summarize(res["iou"], res["iou_oracle"], res["area"], settings)
    assert m["miou"]["1"] == pytest.approx(expected.mean())
    assert m["noc"]["85"] == pytest.approx((3 + 1 + 1) / 3)  # 0.75 never reaches 0.85
    assert m["noc_failures"]["85"] == 1
    assert m["miou_by_area"]["small"]["num_masks"] == 1  # 441 px < 32^2
    assert m["miou_by_area"]["medium"]["1"] == pytest.approx(expected[1:].mean())
    # second click: 3-px FN strip (cols 5..7) and FP strip (cols 26..28) tie -> background
    # click in the middle column of the FP strip
    assert res["clicks"][0, 1, 2] == 0 and res["clicks"][0, 1, 0] == 27


# ----------------------------------------------------------------------------- official parity


def _drawn_masks(h, w):
    """Hand-drawn shapes over the photo: ellipse, polygon, rectangle, ring, small blob."""
    shapes = []
    for draw_fn in (
        lambda d: d.ellipse([0.15 * w, 0.1 * h, 0.55 * w, 0.45 * h], fill=1),
        lambda d: d.polygon([(0.6 * w, 0.1 * h), (0.95 * w, 0.3 * h), (0.7 * w, 0.6 * h)], fill=1),
        lambda d: d.rectangle([0.05 * w, 0.55 * h, 0.45 * w, 0.95 * h], fill=1),
        lambda d: (
            d.ellipse([0.5 * w, 0.55 * h, 0.9 * w, 0.95 * h], fill=1),
            d.ellipse([0.62 * w, 0.67 * h, 0.78 * w, 0.83 * h], fill=0),
        ),
        lambda d: d.ellipse([0.45 * w, 0.4 * h, 0.55 * w, 0.5 * h], fill=1),
    ):
        im = Image.new("L", (w, h), 0)
        draw_fn(ImageDraw.Draw(im))
        shapes.append(np.asarray(im, bool))
    return np.stack(shapes)


def _reference_loop(predictor, image, gt, clicks):
    """The protocol, one mask at a time, on the official SamPredictor."""
    torch = pytest.importorskip("torch")
    predictor.set_image(image)
    out = []
    for g in gt:
        y, x = center_click(g)
        pts, labs, clicked, ious, prev, pred = [[x, y]], [1], [(y, x)], [], None, None
        for c in range(max(clicks)):
            if c > 0:
                (y, x), lab = next_click(g, pred, clicked)
                pts.append([x, y])
                labs.append(lab)
                clicked.append((y, x))
            with torch.no_grad():
                masks, scores, low = predictor.predict(
                    np.array(pts, np.float64), np.array(labs), mask_input=prev, multimask_output=c == 0
                )
            best = int(np.argmax(scores)) if c == 0 else 0
            pred, prev = masks[best], low[best][None]
            ious.append(mask_iou(pred, g))
        out.append(ious)
    return np.array(out)


@pytest.fixture(scope="module")
def parity_models(tmp_path_factory):
    pytest.importorskip("segment_anything")
    from benchmarks.reference_sam import official_and_ours
    from configs.tiny import TINY

    return official_and_ours(TINY, tmp_path_factory.mktemp("ckpt"), seed=5)


def test_point_protocol_matches_official_loop(parity_models):
    skimage_data = pytest.importorskip("skimage.data")
    import segment_anything

    from sam_jax import SamPredictor
    from sam_jax.predictor import compile_counts

    official, ours = parity_models
    image = skimage_data.astronaut()
    gt = _drawn_masks(*image.shape[:2])
    settings = PointSettings(clicks=(1, 2, 3, 5, 9), masks_per_batch=4)
    mine = SamPredictor(ours)
    res = evaluate_image(mine, image, gt, settings)
    ref = _reference_loop(segment_anything.SamPredictor(official), image, gt, settings.clicks)
    print(
        "PARITY per-mask IoU (ours)\n", np.round(res["iou"], 4), "\nmax diff", np.abs(res["iou"] - ref).max()
    )
    for n in settings.clicks:
        np.testing.assert_allclose(res["iou"][:, n - 1], ref[:, n - 1], atol=1e-3, err_msg=f"N={n}")
    assert res["iou"].std() > 0  # the loop does something non-trivial on random weights
    # Next images reuse every compiled function: same size, then another size.
    counts = compile_counts()
    evaluate_image(mine, image[::-1].copy(), gt[:, ::-1].copy(), settings)
    assert compile_counts() == counts
    other = skimage_data.chelsea()
    evaluate_image(mine, other, _drawn_masks(*other.shape[:2]), settings)
    after = compile_counts()
    assert after["decode"] == counts["decode"] and after["embed"] == counts["embed"]
