"""SamPredictor: input validation, image formats, shapes, batching and compile counts."""

from __future__ import annotations

import numpy as np
import pytest

from configs.tiny import TINY
from sam_jax import SamPredictor, build_sam  # noqa: E402
from sam_jax.predictor import compile_counts  # noqa: E402


@pytest.fixture(scope="module")
def predictor():
    p = SamPredictor(build_sam(TINY, seed=1))
    rng = np.random.default_rng(0)
    p.set_image(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    return p


def test_predict_before_set_image():
    p = SamPredictor(build_sam(TINY, seed=1))
    assert not p.is_image_set
    with pytest.raises(ValueError, match="set_image"):
        p.predict(np.array([[1.0, 2.0]]), np.array([1]))
    with pytest.raises(ValueError, match="set_image"):
        p.get_image_embedding()


@pytest.mark.parametrize(
    "image, match",
    [
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((10, 10, 2), np.uint8), "shape"),
        (np.zeros((2, 10, 10, 3), np.uint8), "shape"),
        (np.zeros((0, 10, 3), np.uint8), "empty"),
    ],
)
def test_bad_images(predictor, image, match):
    with pytest.raises(ValueError, match=match):
        predictor.set_image(image)
    with pytest.raises(ValueError, match="image_format"):
        predictor.set_image(np.zeros((4, 4, 3), np.uint8), image_format="HSV")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(point_coords=np.array([[np.nan, 1.0]]), point_labels=np.array([1])), "NaN"),
        (dict(point_coords=np.array([[1.0, 1.0]]), point_labels=np.array([2])), "point_labels"),
        (dict(point_coords=np.array([[1.0, 1.0]]), point_labels=np.array([-1])), "point_labels"),
        (dict(point_coords=np.array([[1.0, 1.0]])), "point_labels"),
        (dict(point_labels=np.array([1])), "point_coords"),
        (dict(point_coords=np.array([[1.0, 1.0], [2.0, 2.0]]), point_labels=np.array([1])), "shape"),
        (dict(point_coords=np.array([1.0, 1.0]), point_labels=np.array([1])), "point_coords"),
        (dict(box=np.array([10.0, 5.0, 2.0, 8.0])), "x1 >= x0"),
        (dict(box=np.array([1.0, 5.0, 2.0, 4.0])), "y1 >= y0"),
        (dict(box=np.array([1.0, 5.0, 2.0])), "box"),
        (dict(box=np.array([0.0, 0.0, np.inf, 4.0])), "NaN or infinite"),
        (dict(mask_input=np.zeros((1, 32, 32))), "mask_input"),
        (dict(mask_input=np.zeros((64, 64))), "mask_input"),
    ],
)
def test_bad_prompts(predictor, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(**kwargs)


def test_image_conversions_and_state(predictor):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, -1)
    rgba = np.concatenate([rgb, np.full((40, 30, 1), 7, np.uint8)], -1)
    p = SamPredictor(predictor.model)
    embeddings = []
    for im in (gray, rgb, rgba):
        p.set_image(im)
        embeddings.append(p.get_image_embedding())
    assert p.original_size == (40, 30) and p.input_size == (256, 192)
    assert embeddings[0].shape == (1, TINY.prompt_embed_dim, 16, 16)
    np.testing.assert_array_equal(embeddings[0], embeddings[1])
    np.testing.assert_array_equal(embeddings[1], embeddings[2])
    p.reset_image()
    assert not p.is_image_set and p.original_size is None


def test_output_shapes_and_types(predictor):
    masks, iou, low = predictor.predict(np.array([[10.0, 20.0]]), np.array([1]))
    assert masks.shape == (3, 60, 90) and masks.dtype == bool
    assert iou.shape == (3,) and iou.dtype == np.float32
    assert low.shape == (3, TINY.low_res_size, TINY.low_res_size) and low.dtype == np.float32
    logits, _, _ = predictor.predict(box=np.array([5, 5, 40, 50]), multimask_output=False, return_logits=True)
    assert logits.shape == (1, 60, 90) and logits.dtype == np.float32
    # Logits threshold to the boolean masks.
    masks1, _, _ = predictor.predict(box=np.array([5, 5, 40, 50]), multimask_output=False)
    np.testing.assert_array_equal(masks1, logits > 0)


def test_predict_torch_leaves_results_on_the_device(predictor):
    import jax

    coords = np.array([[[10.0, 20.0]], [[30.0, 5.0]]])
    on_device = predictor.predict_torch(coords, np.ones((2, 1)), return_logits=True)
    on_host = predictor.predict_batch(coords, np.ones((2, 1)), return_logits=True)
    for d, h in zip(on_device, on_host):
        assert isinstance(d, jax.Array) and isinstance(h, np.ndarray)
        np.testing.assert_array_equal(np.asarray(d), h)
    with pytest.raises(ValueError, match="point_labels"):  # the same validation as predict
        predictor.predict_torch(coords, np.full((2, 1), 3))


def test_padding_is_exact_and_batch_equals_single(predictor):
    pts = np.array([[10.0, 20.0], [50.0, 30.0], [70.0, 50.0]])
    labels = np.array([1, 0, 1])
    single = [predictor.predict(pts[:k], labels[:k]) for k in (1, 2, 3)]
    model_pts = predictor.transform.apply_coords(pts, predictor.original_size)
    # Row k holds k real points, padded with INVALID_LABEL (-2) to 3.
    batch_pts = np.repeat(model_pts[None], 3, 0)
    batch_labels = np.array([[1, -2, -2], [1, 0, -2], [1, 0, 1]])
    masks, iou, low = predictor.predict_batch(batch_pts, batch_labels)
    assert masks.shape == (3, 3, 60, 90) and iou.shape == (3, 3)
    for k in range(3):
        np.testing.assert_allclose(iou[k], single[k][1], atol=1e-5)
        np.testing.assert_allclose(low[k], single[k][2], atol=1e-4)
        assert np.mean(masks[k] == single[k][0]) > 0.999
    with pytest.raises(ValueError, match="batch sizes differ"):
        predictor.predict_batch(batch_pts, batch_labels, boxes=np.zeros((2, 4)))
    with pytest.raises(ValueError, match="point_labels"):
        predictor.predict_batch(batch_pts, batch_labels[:, :2])


def test_bucketing_avoids_recompiling(predictor):
    rng = np.random.default_rng(2)
    predictor.predict(rng.uniform(0, 60, (3, 2)), np.ones(3))  # warm the 4-point bucket
    before = compile_counts()
    for n in (3, 4, 3, 4):  # all in the same bucket of 4
        predictor.predict(rng.uniform(0, 60, (n, 2)), rng.integers(0, 2, n))
    assert compile_counts() == before
    # A new image of another size re-uses the embedding compilation.
    predictor.set_image(rng.integers(0, 256, (80, 50, 3), dtype=np.uint8))
    assert compile_counts()["embed"] == before["embed"]
    assert compile_counts()["decode"] == before["decode"]
    # Five points fall into the next bucket: exactly one more decode compilation.
    predictor.predict(rng.uniform(0, 50, (5, 2)), np.ones(5))
    predictor.predict(rng.uniform(0, 50, (7, 2)), np.ones(7))
    assert compile_counts()["decode"] == before["decode"] + 1


def test_set_images_matches_set_image(predictor):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, s, dtype=np.uint8) for s in [(50, 70, 3), (64, 64, 3), (90, 40, 3)]]
    p = SamPredictor(predictor.model)
    p.set_images(images)
    assert p.num_images == 3
    q = SamPredictor(predictor.model)
    for i, im in enumerate(images):
        p.use_image(i)
        q.set_image(im)
        assert p.original_size == q.original_size and p.input_size == q.input_size
        np.testing.assert_allclose(p.get_image_embedding(), q.get_image_embedding(), atol=1e-4)
    with pytest.raises(ValueError, match="out of range"):
        p.use_image(3)


@pytest.mark.parametrize("shape", [(1, 4000, 3), (4000, 1, 3), (2, 3000, 3)])
def test_extremely_elongated_images(predictor, shape):
    """The short side rounds to 0 pixels at the model's size: it is clamped to 1."""
    s = TINY.image_size
    image = np.zeros(shape, np.uint8)
    image[..., 0] = 200
    predictor.set_image(image)
    h, w = shape[:2]
    assert predictor.original_size == (h, w)
    assert predictor.input_size == ((1, s) if h < w else (s, 1))
    masks, iou, low = predictor.predict(np.array([[min(w, 5) - 1.0, min(h, 5) - 1.0]]), np.array([1]))
    assert masks.shape == (3, h, w) and np.all(np.isfinite(iou)) and np.all(np.isfinite(low))


def test_elongated_image_in_the_mask_generator():
    from sam_jax import SamAutomaticMaskGenerator

    gen = SamAutomaticMaskGenerator(
        build_sam(TINY, seed=1), points_per_side=2, pred_iou_thresh=0.0, stability_score_thresh=0.0
    )
    records = gen.generate(np.full((2, 3000, 3), 120, np.uint8))
    assert all(r["segmentation"].shape == (2, 3000) for r in records)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(point_coords=np.array([[1e300, 5.0]]), point_labels=np.array([1])), "point_coords"),
        (dict(point_coords=np.array([[5.0, -1e39]]), point_labels=np.array([1])), "point_coords"),
        (dict(box=np.array([0.0, 0.0, 1e300, 4.0])), "box"),
        (dict(mask_input=np.full((1, TINY.image_size // 4, TINY.image_size // 4), 1e39)), "mask_input"),
    ],
)
def test_finite_but_huge_prompts_are_refused(predictor, kwargs, name):
    """Finite in float64, infinite in the model's dtype: NaN scores before the check."""
    predictor.set_image(np.zeros((60, 90, 3), np.uint8))
    with pytest.raises(ValueError, match=f"{name} has values too large for the model's float32"):
        predictor.predict(**kwargs)


def test_image_cache_gives_the_uncached_decode(predictor):
    """``image_cache`` (first-block projections and the dense positional encoding, made
    once per image) changes no result: one row, a batch decoded row by row on the CPU
    with one shared embedding, and a batch with an embedding (and cache) per row."""
    model, emb = predictor.model, predictor.features
    cache = model.image_cache(emb)
    assert cache["image_pe"].shape == emb.shape
    rng = np.random.default_rng(3)
    coords = rng.uniform(0, model.image_size, (4, 2, 2)).astype(np.float32)
    labels = np.array([[1, 0], [1, -2], [0, 1], [1, 1]], np.int32)
    emb4 = np.concatenate([np.asarray(emb), np.asarray(emb)[:, ::-1], np.asarray(emb) * 0.5, np.asarray(emb)])
    for e, c, lab in ((emb, coords[:1], labels[:1]), (emb, coords, labels), (emb4, coords, labels)):
        for multimask in (True, False):
            plain = model.decode(e, c, lab, multimask_output=multimask)
            cached = model.decode(e, c, lab, multimask_output=multimask, image_cache=model.image_cache(e))
            np.testing.assert_allclose(np.asarray(cached[0]), np.asarray(plain[0]), atol=2e-5, rtol=1e-5)
            np.testing.assert_allclose(np.asarray(cached[1]), np.asarray(plain[1]), atol=2e-6)
