"""Prompt simulation: sampled points, labels, box noise, the pass schedule, the feedback."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sam_jax.modeling.prompt_encoder import INVALID_LABEL
from train.prompt_simulation import (
    SimConfig,
    boundary_sq_distance,
    clicked_cells,
    farthest_error_points,
    initial_prompts,
    noisy_boxes,
    pass_schedule,
    region_valid_from_hw,
    sample_error_points,
    simulate,
)

S, R = 128, 32


def _disc(n, r=R, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:r, 0:r]
    c = rng.uniform(8, 24, (n, 2))
    rad = rng.uniform(3, 8, n)
    return (xx[None] - c[:, 0, None, None]) ** 2 + (yy[None] - c[:, 1, None, None]) ** 2 <= rad[
        :, None, None
    ] ** 2


@pytest.mark.parametrize("mode", ["uniform", "centre"])
def test_error_points_lie_in_error_region_with_labels(mode):
    n = 64
    target = _disc(n, seed=1)
    pred = _disc(n, seed=2)  # overlapping discs: both FN and FP cells
    logits = np.where(pred, 5.0, -5.0).astype(np.float32)
    xy, lab, found = sample_error_points(
        jax.random.key(0), jnp.asarray(logits), jnp.asarray(target), None, S, mode
    )
    xy, lab, found = map(np.asarray, (xy, lab, found))
    assert found.all()
    cell = np.floor((xy + 0.5) / (S / R)).astype(int)  # x in [4j - .5, 4j + 3.5)
    i, j = cell[:, 1], cell[:, 0]
    t = target[np.arange(n), i, j]
    p = pred[np.arange(n), i, j]
    assert (t != p).all(), "every point is in the error region"
    np.testing.assert_array_equal(lab, np.where(t & ~p, 1, 0))  # FN -> 1, FP -> 0
    assert set(np.unique(lab)) == {0, 1}
    if mode == "centre":
        np.testing.assert_allclose(xy, cell * 4 + 1.5)


def test_error_points_uniform_over_region_and_empty_region():
    target = np.zeros((4000, R, R), bool)
    target[:, 0, 0:3] = True  # three FN cells, one FP cell
    logits = np.full((4000, R, R), -1.0, np.float32)
    logits[:, 5, 5] = 1.0
    xy, lab, found = sample_error_points(
        jax.random.key(1), jnp.asarray(logits), jnp.asarray(target), None, S, "centre"
    )
    counts = np.bincount(np.asarray(lab), minlength=2)
    assert abs(counts[1] / 4000 - 0.75) < 0.03  # 3 of 4 error cells are FN
    # a perfect prediction has no error region: no point
    _, _, found = sample_error_points(
        jax.random.key(2), jnp.asarray(np.where(target, 1.0, -1.0)), jnp.asarray(target), None, S
    )
    assert not np.asarray(found).any()


def _blobs(n, seed):
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    return np.stack([ndimage.gaussian_filter(rng.normal(size=(R, R)), 3) > 0.05 for _ in range(n)])


def test_farthest_error_points_are_the_protocol_clicks():
    """``sim.farthest_prob``'s clicker at the low-res grid is the evaluation's
    ``next_click`` (exact distance transform, clicked cells excluded, FN wins only if
    strictly farther), on random blobs touching the border."""
    from scipy import ndimage

    from sam_jax.evaluation.points import next_click

    n = 40
    target, pred = _blobs(n, 0), _blobs(n, 1)
    d = np.asarray(boundary_sq_distance(jnp.asarray(target)))
    ref = np.stack([ndimage.distance_transform_edt(np.pad(t, 1))[1:-1, 1:-1] ** 2 for t in target])
    np.testing.assert_allclose(d, ref, atol=1e-5)
    # two earlier clicks per row, one of them on the previous winner where possible
    rng = np.random.default_rng(2)
    coords = rng.uniform(0, S, (n, 3, 2)).astype(np.float32)
    for k in range(n):
        (y, x), _ = next_click(target[k], pred[k])
        if k % 2:
            coords[k, 0] = (x * 4 + 1, y * 4 + 2)
    labels = np.array([[1, 0, INVALID_LABEL]] * n)
    clicked = np.asarray(clicked_cells(jnp.asarray(coords), jnp.asarray(labels), R, S))
    logits = jnp.asarray(np.where(pred, 3.0, -3.0).astype(np.float32))
    xy, lab, found = map(
        np.asarray,
        farthest_error_points(
            jax.random.key(0), logits, jnp.asarray(target), None, jnp.asarray(clicked), S, "centre"
        ),
    )
    assert found.all() and set(lab) == {0, 1}
    for k in range(n):
        cells = [tuple(int(v) for v in np.floor((c[::-1] + 0.5) / 4)) for c in coords[k, :2]]
        assert clicked[k].sum() == len(set(cells))
        (y, x), want = next_click(target[k], pred[k], cells)
        assert (lab[k], tuple(xy[k])) == (want, (x * 4 + 1.5, y * 4 + 1.5)), k


def test_simulate_farthest_first_point():
    """``farthest_prob=1``: point rows start at the GT cell farthest from the mask boundary
    (the protocol's first click); 0 keeps the data pipeline's point."""
    n = 64
    target = jnp.asarray(_disc(n, seed=4))
    pts = jnp.full((n, 2), 7.0)

    def decode(coords, labels, boxes, box_valid, mask_inputs, mask_valid, multimask):
        k = 3 if multimask else 1
        return jnp.zeros((coords.shape[0], k, R, R)), jnp.zeros((coords.shape[0], k))

    boxes = jnp.tile(jnp.asarray([[0.0, 0.0, 50.0, 50.0]]), (n, 1))
    for prob in (0.0, 1.0):
        sim = SimConfig(
            num_passes=2, num_correction_points=1, box_prob=0.0, farthest_prob=prob, point_in_cell="centre"
        )
        out = simulate(decode, jax.random.key(0), target, pts, boxes, sim, S)
        first = np.asarray(out["coords"])[:, 0]
        if prob == 0:
            np.testing.assert_array_equal(first, 7.0)
            continue
        d = np.asarray(boundary_sq_distance(target)).reshape(n, -1).argmax(1)
        np.testing.assert_array_equal(first, np.stack([d % R, d // R], 1) * 4 + 1.5)
        # the all-background prediction: the correction is a FN click on the GT centre's cell
        # (excluded once clicked): the next-farthest cell, label 1
        lab = np.asarray(out["labels"])
        assert (lab[:, 1] == 1).all()
        second = np.floor((np.asarray(out["coords"])[:, 1] + 0.5) / 4).astype(int)
        assert (np.asarray(target)[np.arange(n), second[:, 1], second[:, 0]]).all()
        assert (np.abs(np.asarray(out["coords"])[:, 1] - first).sum(1) > 0).all()


def test_region_valid_excludes_padding():
    target = np.zeros((2, R, R), bool)
    logits = np.ones((2, R, R), np.float32)  # all FP, also in the padding
    valid = region_valid_from_hw(jnp.asarray([[64, 128], [128, 40]]), R, S)
    xy, lab, found = sample_error_points(
        jax.random.key(3), jnp.asarray(logits), jnp.asarray(target), valid, S
    )
    xy = np.asarray(xy)
    assert xy[0, 1] < 64 and xy[1, 0] < 40 + 4
    assert np.asarray(valid)[1, :, :10].all() and not np.asarray(valid)[1, :, 10:].any()


def test_box_noise_statistics():
    n = 20000
    sim = SimConfig(box_noise_frac=0.1, box_noise_max=20.0)
    boxes = jnp.tile(jnp.asarray([[40.0, 50.0, 90.0, 80.0]]), (n, 1))  # w 50, h 30
    noisy = np.asarray(noisy_boxes(jax.random.key(0), boxes, sim, 1024))
    d = noisy - np.asarray(boxes)
    np.testing.assert_allclose(d.std(0), [5.0, 3.0, 5.0, 3.0], rtol=0.03)
    np.testing.assert_allclose(d.mean(0), 0.0, atol=0.1)
    big = jnp.tile(jnp.asarray([[100.0, 100.0, 900.0, 900.0]]), (n, 1))  # std 80 -> clipped
    d = np.asarray(noisy_boxes(jax.random.key(1), big, sim, 1024)) - np.asarray(big)
    assert np.abs(d).max() <= 20.0 + 1e-4 and (np.abs(d) > 19.99).mean() > 0.7


def test_initial_prompts_point_or_box():
    n = 4000
    sim = SimConfig(num_passes=11, box_prob=0.5)
    pts = jnp.tile(jnp.asarray([[10.0, 20.0]]), (n, 1))
    boxes = jnp.tile(jnp.asarray([[0.0, 0.0, 50.0, 50.0]]), (n, 1))
    coords, labels, _, box_valid = map(np.asarray, initial_prompts(jax.random.key(0), pts, boxes, sim, 128))
    assert coords.shape == (n, 11, 2) and labels.shape == (n, 11)
    assert abs(box_valid.mean() - 0.5) < 0.03
    np.testing.assert_array_equal(labels[:, 0], np.where(box_valid, INVALID_LABEL, 1))
    assert (labels[:, 1:] == INVALID_LABEL).all()
    np.testing.assert_array_equal(coords[~box_valid, 0], np.tile([[10.0, 20.0]], (n - box_valid.sum(), 1)))


@pytest.mark.parametrize("passes,points", [(11, 8), (5, 2), (4, 3), (1, 0)])
def test_pass_schedule(passes, points):
    sim = SimConfig(num_passes=passes, num_correction_points=points)
    sched = np.asarray(pass_schedule(jax.random.key(0), 3000, sim))
    assert sched.shape == (3000, passes) and sched[:, 0].all()
    assert (sched[:, 1:].sum(1) == points).all()
    if passes - 1 > points:
        assert not sched[:, -1].any(), "the last pass adds no point"
    if passes - 1 - points == 2:
        # the other no-point pass sits uniformly among passes 1..P-2
        pos = np.argmin(sched[:, 1:-1], axis=1)
        freq = np.bincount(pos, minlength=passes - 2) / 3000
        np.testing.assert_allclose(freq, 1 / (passes - 2), atol=0.03)


def test_simulate_fills_slots_and_feeds_back_best_mask():
    n, sim = 32, SimConfig(num_passes=11, num_correction_points=8, box_prob=0.5)
    target = jnp.asarray(_disc(n, seed=3))
    calls = []

    def decode(coords, labels, boxes, box_valid, mask_inputs, mask_valid, multimask):
        calls.append((multimask, mask_valid))
        k = 3 if multimask else 1
        # logits: a fixed wrong prediction (a shifted target); iou: prefers mask 1
        base = jnp.roll(target, 3, axis=2).astype(jnp.float32) * 2 - 1
        logits = jnp.stack([base + 0.1 * i for i in range(k)], 1)
        iou = jnp.tile(jnp.asarray([0.1, 0.9, 0.2][:k]), (n, 1))
        if not multimask:  # echo the mask prompt: shows what was fed back
            logits = mask_inputs[:, None] + 0.0 * logits
        return logits, iou

    out = jax.jit(
        lambda key: simulate(
            decode,
            key,
            target,
            jnp.full((n, 2), 60.0),
            jnp.tile(jnp.asarray([[30.0, 30.0, 90.0, 90.0]]), (n, 1)),
            sim,
            S,
        )
    )(jax.random.key(0))
    assert out["first_logits"].shape == (n, 3, R, R) and out["logits"].shape == (10, n, R, R)
    labels, add = np.asarray(out["labels"]), np.asarray(out["add_point"])
    # slots 1..10: a label 0/1 exactly where the schedule adds a point (error region non-empty)
    np.testing.assert_array_equal(labels[:, 1:] != INVALID_LABEL, add[:, 1:])
    assert set(np.unique(labels[:, 1:][add[:, 1:]])) <= {0, 1}
    assert [c[0] for c in calls] == [True, False]  # pass 0 multimask, scan body single
    # the mask prompt of pass 1 is pass 0's highest-predicted-IoU mask (index 1), then chained
    np.testing.assert_allclose(
        np.asarray(out["logits"]), np.broadcast_to(np.asarray(out["first_logits"][:, 1]), (10, n, R, R))
    )
    # every sampled point is in the error region of the (fixed) previous prediction
    pred = np.asarray(jnp.roll(target, 3, axis=2))
    c = np.floor((np.asarray(out["coords"])[:, 1:] + 0.5) / 4).astype(int)
    rows = np.repeat(np.arange(n)[:, None], 10, 1)
    t = np.asarray(target)[rows, c[..., 1], c[..., 0]]
    p = pred[rows, c[..., 1], c[..., 0]]
    m = add[:, 1:]
    assert (t != p)[m].all()
    np.testing.assert_array_equal(labels[:, 1:][m], t[m].astype(int))


def test_remat_passes_same_step_less_memory():
    """``sim.remat``: the same loss and updated params, less temporary memory."""
    from configs.tiny import get_config
    from data.synthetic_batch import make_batch
    from train.sharding import make_mesh
    from train.train_step import Trainer, host_metrics

    results = {}
    for remat in (False, True):
        c = get_config()
        c.sim.num_passes, c.sim.num_correction_points, c.sim.unroll = 4, 2, 1
        c.sim.remat = remat
        c.data.masks_per_image = 8
        # Adam's first step is +-lr whatever the gradient's size; a larger eps keeps
        # the update of (near-)zero gradients, where rounding decides, at noise level.
        c.optim.warmup_steps, c.optim.eps = 0, 1e-3
        trainer = Trainer(c, make_mesh({"data": 1, "fsdp": 1}, jax.devices()[:1]))
        state = trainer.init_state(0)
        batch = trainer.to_global(make_batch(3, 2, 8, 128))
        temp = trainer.lower(state, batch).compile().memory_analysis().temp_size_in_bytes
        state, metrics = trainer.step(state, batch)
        results[remat] = (host_metrics(metrics)["loss"], jax.device_get(state.params), temp)
    (loss0, p0, temp0), (loss1, p1, temp1) = results[False], results[True]
    print(f"loss {loss0} vs {loss1}; temp memory {temp0 / 2**20:.1f} -> {temp1 / 2**20:.1f} MiB")
    np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
    # Recomputation reorders float rounding: differences far below one update (lr).
    a, b = jax.tree_util.tree_leaves(p0), jax.tree_util.tree_leaves(p1)
    assert max(float(np.abs(x - y).max()) for x, y in zip(a, b)) <= 0.01 * c.optim.lr
    diff = np.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(a, b)))
    assert diff <= 1e-5 * np.sqrt(sum((x**2).sum() for x in a))
    assert temp1 < 0.8 * temp0
