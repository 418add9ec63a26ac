"""SamPredictor against the official predictor on identical random weights."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.reference_sam import official_and_ours, torch
from configs.tiny import TINY

skimage_data = pytest.importorskip("skimage.data")
segment_anything = pytest.importorskip("segment_anything")

from sam_jax import SamPredictor  # noqa: E402


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return official_and_ours(TINY, tmp_path_factory.mktemp("ckpt"), seed=3)


@pytest.fixture(scope="module", params=["astronaut", "chelsea"])
def predictors(request, models):
    official, ours = models
    image = getattr(skimage_data, request.param)()
    theirs = segment_anything.SamPredictor(official)
    with torch.no_grad():
        theirs.set_image(image)
    mine = SamPredictor(ours)
    mine.set_image(image)
    return image, theirs, mine


def _prompts(h, w):
    return {
        "one point": dict(point_coords=np.array([[0.4 * w, 0.45 * h]]), point_labels=np.array([1])),
        "points": dict(
            point_coords=np.array([[0.3 * w, 0.3 * h], [0.6 * w, 0.5 * h], [0.5 * w, 0.8 * h]]),
            point_labels=np.array([1, 0, 1]),
        ),
        "box": dict(box=np.array([0.2 * w, 0.1 * h, 0.7 * w, 0.9 * h])),
        "box + points": dict(
            box=np.array([0.1 * w, 0.2 * h, 0.8 * w, 0.7 * h]),
            point_coords=np.array([[0.5 * w, 0.5 * h], [0.2 * w, 0.6 * h]]),
            point_labels=np.array([1, 0]),
        ),
    }


CASES = ["one point", "points", "box", "box + points"]


def _compare(theirs_out, mine_out, min_agree=0.995, iou_atol=1e-3):
    (tm, ti, tl), (mm, mi, ml) = theirs_out, mine_out
    assert mm.shape == tm.shape and mm.dtype == tm.dtype
    assert mi.shape == ti.shape and mi.dtype == np.float32
    assert ml.shape == tl.shape and ml.dtype == np.float32
    agree = float(np.mean(mm == tm))
    assert agree >= min_agree, agree
    np.testing.assert_allclose(mi, ti, atol=iou_atol)
    return agree, float(np.max(np.abs(mi - ti)))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("multimask", [True, False])
def test_predict_matches_official(predictors, case, multimask):
    image, theirs, mine = predictors
    kw = _prompts(*image.shape[:2])[case]
    with torch.no_grad():
        ref = theirs.predict(multimask_output=multimask, **kw)
    out = mine.predict(multimask_output=multimask, **kw)
    agree, diff = _compare(ref, out)
    print(f"PARITY {image.shape} {case} multimask={multimask}: agree={agree:.5f} iou_diff={diff:.2e}")


def test_mask_input_and_logits_match(predictors):
    image, theirs, mine = predictors
    kw = _prompts(*image.shape[:2])["points"]
    with torch.no_grad():
        _, ti, tl = theirs.predict(multimask_output=True, **kw)
    best = tl[np.argmax(ti)][None]
    with torch.no_grad():
        ref = theirs.predict(mask_input=best, multimask_output=False, return_logits=True, **kw)
    out = mine.predict(mask_input=best, multimask_output=False, return_logits=True, **kw)
    assert out[0].dtype == np.float32
    agree, diff = _compare((ref[0] > 0, ref[1], ref[2]), (out[0] > 0, out[1], out[2]))
    scale = np.abs(ref[0]).max()
    assert np.max(np.abs(out[0] - ref[0])) < 1e-2 * scale
    print(f"PARITY {image.shape} mask_input: agree={agree:.5f} iou_diff={diff:.2e}")


def test_bgr_and_embedding_match(models, predictors):
    image, theirs, mine = predictors
    bgr = np.ascontiguousarray(image[..., ::-1])
    other = SamPredictor(models[1])
    other.set_image(bgr, image_format="BGR")
    emb = other.get_image_embedding()
    ref_emb = theirs.get_image_embedding().numpy()
    assert emb.shape == ref_emb.shape == (1, TINY.prompt_embed_dim, 16, 16)
    np.testing.assert_allclose(emb, ref_emb, atol=2e-3 * np.abs(ref_emb).max())
    kw = _prompts(*image.shape[:2])["one point"]
    with torch.no_grad():
        ref = theirs.predict(**kw)
    _compare(ref, other.predict(**kw))
    assert other.original_size == theirs.original_size
    assert other.input_size == theirs.input_size


def test_apply_image_matches_official(predictors):
    image, theirs, mine = predictors
    np.testing.assert_array_equal(mine.transform.apply_image(image), theirs.transform.apply_image(image))
    pts = np.array([[3.0, 7.0], [100.5, 20.25]])
    np.testing.assert_allclose(
        mine.transform.apply_coords(pts, image.shape[:2]), theirs.transform.apply_coords(pts, image.shape[:2])
    )
    box = np.array([[1.0, 2.0, 50.0, 60.0]])
    np.testing.assert_allclose(
        mine.transform.apply_boxes(box, image.shape[:2]), theirs.transform.apply_boxes(box, image.shape[:2])
    )


def test_predict_batch_matches_official(predictors):
    image, theirs, mine = predictors
    h, w = image.shape[:2]
    boxes = np.array(
        [
            [0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h],
            [0.3 * w, 0.2 * h, 0.9 * w, 0.9 * h],
            [0.0, 0.0, w - 1.0, h - 1.0],
        ]
    )
    tb = theirs.transform.apply_boxes(boxes, image.shape[:2])
    with torch.no_grad():
        ref = [t.numpy() for t in theirs.predict_torch(None, None, torch.as_tensor(tb).float())]
    out = mine.predict_torch(None, None, tb)
    assert out[0].shape == (3, 3, h, w) and out[1].shape == (3, 3)
    assert out[2].shape == (3, 3, TINY.low_res_size, TINY.low_res_size)
    _compare(ref, out)
    # Ragged point sets: padding a row with INVALID_LABEL equals a call with fewer points.
    pts = theirs.transform.apply_coords(
        np.array([[[0.3 * w, 0.4 * h], [0.6 * w, 0.6 * h]], [[0.7 * w, 0.2 * h], [0.0, 0.0]]]),
        image.shape[:2],
    )
    labels = np.array([[1, 0], [1, -2]])
    masks, iou, low = mine.predict_batch(pts, labels)
    with torch.no_grad():
        ref1 = [
            t.numpy()
            for t in theirs.predict_torch(
                torch.as_tensor(pts[1:, :1]).float(), torch.as_tensor(labels[1:, :1])
            )
        ]
    _compare([r[0] for r in ref1], (masks[1], iou[1], low[1]))
