"""Simulated interactive prompting (SAM paper, Appendix A), on device and jittable.

For every mask (the decoder batch is ``n`` = images x masks rows, each row with
its image's embedding) the model is run ``P = num_passes`` times (11):

* pass 0: the first prompt is a foreground point (the data pipeline's point,
  uniform inside the GT mask) or, with probability ``box_prob``, a noisy box
  (:func:`noisy_boxes`); multimask output (3 masks);
* passes 1..P-1: single-mask output; the previous low-res logits are fed back as
  the mask prompt (after pass 0: the mask with the highest predicted IoU), with
  ``stop_gradient``. ``num_correction_points`` (8) of these passes add one point
  sampled uniformly from the error region of the previous prediction (false
  negative -> label 1, false positive -> label 0); the others add nothing: the
  last pass always, the rest at random positions among passes 1..P-2
  (:func:`pass_schedule`). With the defaults: 8 point passes, one no-point pass
  at a random position among them and one at the end.

``farthest_prob`` (0 in the paper's recipe) makes a point, with that probability per row
and pass, the click of the evaluation protocol (``sam_jax.evaluation.points``, RITM's
clicker) instead: the first point the GT cell farthest from the mask's boundary, a
correction the error cell farthest from its region's boundary
(:func:`farthest_error_points`, exact distance transforms at ``R``).

Static shapes: the point array has one slot per pass, ``(n, P, 2)`` / ``(n, P)``;
a slot not (yet) filled carries ``INVALID_LABEL`` and is excluded from attention.
A box stays in the prompt for all passes once drawn. If the error region is empty
(perfect prediction) the pass adds no point. Rows flagged ``text_first`` (CLIP
prompts, :mod:`train.text_prompt`) get neither point nor box in pass 0: their first
prompt is the text token, which ``decode_fn`` adds to every pass. Their pass 0 takes the
*single-mask* output (a whole-object embedding is not an ambiguous prompt; SAM predicts
one mask when the prompt is unambiguous, Appendix A), repeated over the 3 slots: with
the best-of-3 loss the model could otherwise cover the image's candidate objects with
its three masks and never learn to read the text token.

Error regions are computed at the low-res resolution ``R`` (256 for 1024 input)
against the GT target at that resolution, restricted to the un-padded image
(``region_valid``). A sampled cell ``(i, j)`` covers input pixels
``[s*j, s*j + s)`` (``s = S / R``), whose centres are at ``x = s*j + (s-1)/2``
(pixel centre convention of the data pipeline: pixel ``(i, j)`` centre at
``x=j, y=i``); ``point_in_cell="uniform"`` draws ``x`` uniformly in
``[s*j - 1/2, s*j + s - 1/2)`` instead.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from sam_jax.modeling.prompt_encoder import INVALID_LABEL


@dataclasses.dataclass(frozen=True)
class SimConfig:
    num_passes: int = 11
    num_correction_points: int = 8
    box_prob: float = 0.5
    box_noise_frac: float = 0.1
    box_noise_max: float = 20.0
    point_in_cell: str = "uniform"
    # Probability (per row and point) that a point prompt is the evaluation protocol's
    # click instead of a uniform one: the first point the GT cell farthest from the
    # mask boundary, a correction the error cell farthest from its region's boundary
    # (:func:`farthest_error_points`). 0 = the paper.
    farthest_prob: float = 0.0
    unroll: int = 1  # lax.scan unroll of passes 1..P-1 (faster on CPU, longer compile)
    # Recompute each decoder pass in the backward pass instead of keeping its
    # activations (for 64 masks x 11 passes these outweigh the image encoder's).
    remat: bool = False

    def __post_init__(self):
        if self.num_passes < 1:
            raise ValueError(f"num_passes must be >= 1, got {self.num_passes}")
        if not 0 <= self.num_correction_points <= self.num_passes - 1:
            raise ValueError(
                f"num_correction_points ({self.num_correction_points}) must be in "
                f"[0, num_passes - 1 = {self.num_passes - 1}]"
            )
        if self.point_in_cell not in ("uniform", "centre"):
            raise ValueError(f"point_in_cell must be 'uniform' or 'centre', got {self.point_in_cell!r}")
        if not 0.0 <= self.farthest_prob <= 1.0:
            raise ValueError(f"farthest_prob must be in [0, 1], got {self.farthest_prob}")


# decode_fn(coords (n,P,2), labels (n,P), boxes (n,4), box_valid (n,), mask_inputs (n,R,R),
#           mask_valid (n,), multimask: bool) -> (logits (n,K,R,R), iou (n,K))
DecodeFn = Callable[..., tuple[jax.Array, jax.Array]]


def pass_schedule(key: jax.Array, n: int, sim: SimConfig) -> jax.Array:
    """``(n, P)`` bool: which passes add a new point (pass 0 = the initial prompt, True).

    Of passes 1..P-1, exactly ``num_correction_points`` add a point. The no-point
    passes are the last one plus the rest drawn uniformly (per row) among 1..P-2.
    """
    p = sim.num_passes
    if p == 1:
        return jnp.ones((n, 1), bool)
    no_point = p - 1 - sim.num_correction_points
    middle = p - 2
    # Random ranks among the middle passes; the (no_point - 1) lowest get no point.
    ranks = jnp.argsort(jnp.argsort(jax.random.uniform(key, (n, middle)), axis=1), axis=1)
    mid_add = ranks >= max(no_point - 1, 0)
    last_add = jnp.full((n, 1), no_point == 0)
    return jnp.concatenate([jnp.ones((n, 1), bool), mid_add, last_add], axis=1)


def noisy_boxes(key: jax.Array, boxes: jax.Array, sim: SimConfig, image_size: int) -> jax.Array:
    """GT boxes ``(n, 4)`` XYXY -> noisy boxes: per-coordinate Gaussian noise with std
    ``box_noise_frac`` x the box side (width for x, height for y), clipped to
    ``+-box_noise_max`` px; the result is clipped to the ``[0, S-1]`` frame and ordered."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = jnp.stack([w, h, w, h], axis=1)
    noise = jax.random.normal(key, boxes.shape) * sim.box_noise_frac * side
    noise = jnp.clip(noise, -sim.box_noise_max, sim.box_noise_max)
    b = jnp.clip(boxes + noise, 0.0, image_size - 1.0)
    return jnp.stack(
        [
            jnp.minimum(b[:, 0], b[:, 2]),
            jnp.minimum(b[:, 1], b[:, 3]),
            jnp.maximum(b[:, 0], b[:, 2]),
            jnp.maximum(b[:, 1], b[:, 3]),
        ],
        axis=1,
    )


def initial_prompts(key: jax.Array, points: jax.Array, boxes: jax.Array, sim: SimConfig, image_size: int):
    """The first prompt of each row.

    Args:
      points: ``(n, 2)`` one foreground point per mask (XY, input frame).
      boxes: ``(n, 4)`` GT boxes XYXY (input frame).
    Returns:
      coords ``(n, P, 2)``, labels ``(n, P)`` int32 (slot 0 = the point, label 1, or
      ``INVALID_LABEL`` for box rows; other slots invalid), boxes ``(n, 4)`` (noisy),
      box_valid ``(n,)`` bool.
    """
    n, p = points.shape[0], sim.num_passes
    k_choice, k_noise = jax.random.split(key)
    use_box = jax.random.bernoulli(k_choice, sim.box_prob, (n,))
    coords = jnp.zeros((n, p, 2), jnp.float32).at[:, 0].set(points.astype(jnp.float32))
    labels = jnp.full((n, p), INVALID_LABEL, jnp.int32)
    labels = labels.at[:, 0].set(jnp.where(use_box, INVALID_LABEL, 1))
    return coords, labels, noisy_boxes(k_noise, boxes.astype(jnp.float32), sim, image_size), use_box


def sample_error_points(
    key: jax.Array,
    logits: jax.Array,
    target: jax.Array,
    region_valid: jax.Array | None,
    image_size: int,
    point_in_cell: str = "uniform",
):
    """One point uniformly from each row's error region.

    Args:
      logits: ``(n, R, R)`` previous low-res logits; target: ``(n, R, R)`` bool GT.
      region_valid: ``(n, R, R)`` bool (the un-padded image) or None.
    Returns:
      coords ``(n, 2)`` XY in the ``S x S`` frame, labels ``(n,)`` int32 (1 = false
      negative, 0 = false positive), found ``(n,)`` bool (False: empty error region).
    """
    n, r = target.shape[0], target.shape[-1]
    pred = logits > 0
    error = pred != target
    if region_valid is not None:
        error = error & region_valid
    k_cell, k_in = jax.random.split(key)
    score = jnp.where(error, jax.random.uniform(k_cell, error.shape), -1.0).reshape(n, r * r)
    idx = jnp.argmax(score, axis=1)
    found = jnp.take_along_axis(score, idx[:, None], 1)[:, 0] >= 0
    i, j = idx // r, idx % r
    label = jnp.take_along_axis(target.reshape(n, r * r), idx[:, None], 1)[:, 0].astype(jnp.int32)
    return _cell_points(k_in, i, j, r, image_size, point_in_cell), label, found


def _cell_points(key: jax.Array, i: jax.Array, j: jax.Array, r: int, image_size: int, point_in_cell: str):
    """Cells ``(i, j)`` ``(n,)`` of the ``R x R`` grid -> points ``(n, 2)`` XY in the
    ``S x S`` frame: the cell centre or (``"uniform"``) uniform in the cell."""
    s = image_size / r
    if point_in_cell == "centre":
        off = jnp.full((i.shape[0], 2), (s - 1) / 2)
    else:
        off = jax.random.uniform(key, (i.shape[0], 2)) * s - 0.5
    return jnp.stack([j, i], axis=1).astype(jnp.float32) * s + off


def _sq_distance_pass(g2: jax.Array) -> jax.Array:
    """``(n, L+2, M)`` squared distances with the two end rows outside (0) -> ``(n, L, M)``:
    ``min_l' (l - l')^2 + g2[l']``, one exact 1-D pass of the distance transform."""
    size = g2.shape[1] - 2
    pos = jnp.arange(size, dtype=jnp.float32)[None, :, None]
    # Unrolled over l' = k - 1: XLA fuses the chain of minima into one elementwise loop.
    terms = [(pos - (k - 1.0)) ** 2 + g2[:, k : k + 1] for k in range(size + 2)]
    return functools.reduce(jnp.minimum, terms)


def boundary_sq_distance(region: jax.Array) -> jax.Array:
    """``(n, H, W)`` bool -> ``(n, H, W)`` float32: the squared Euclidean distance of each
    region cell to the nearest cell outside the region, the grid's border counting as
    outside (0 outside the region). Exact, by two 1-D passes: ``scipy.ndimage.
    distance_transform_edt`` of the region padded by one background cell, squared."""
    h, w = region.shape[-2:]
    pad = ((0, 0), (1, 1), (0, 0))
    # Along y: inside cells start "infinitely" far, outside ones at 0.
    col = _sq_distance_pass(jnp.pad(jnp.where(region, float((h + w + 2) ** 2), 0.0), pad))
    # Along x, on the transposed grid.
    d2 = jnp.swapaxes(_sq_distance_pass(jnp.pad(jnp.swapaxes(col, 1, 2), pad)), 1, 2)
    return jnp.where(region, d2, 0.0)


def farthest_error_points(
    key: jax.Array,
    logits: jax.Array,
    target: jax.Array,
    region_valid: jax.Array | None,
    clicked: jax.Array,
    image_size: int,
    point_in_cell: str = "uniform",
):
    """The evaluation protocol's corrective click (:func:`sam_jax.evaluation.points.
    next_click`, the RITM clicker) at the low-res grid: the cell of the false-negative or
    false-positive region farthest from that region's boundary (false negatives win only
    if strictly farther), cells already ``clicked`` ``(n, R, R)`` excluded; the first
    maximum in row-major order. Arguments and returns as :func:`sample_error_points`."""
    n, r = target.shape[0], target.shape[-1]
    pred = logits > 0
    valid = jnp.ones_like(target) if region_valid is None else region_valid
    fn = boundary_sq_distance(target & ~pred & valid) * ~clicked
    fp = boundary_sq_distance(~target & pred & valid) * ~clicked
    fn, fp = fn.reshape(n, r * r), fp.reshape(n, r * r)
    fn_max, fp_max = fn.max(axis=1), fp.max(axis=1)
    use_fn = fn_max > fp_max
    idx = jnp.where(use_fn, jnp.argmax(fn, axis=1), jnp.argmax(fp, axis=1))
    found = jnp.maximum(fn_max, fp_max) > 0
    xy = _cell_points(key, idx // r, idx % r, r, image_size, point_in_cell)
    return xy, use_fn.astype(jnp.int32), found


def clicked_cells(coords: jax.Array, labels: jax.Array, r: int, image_size: int) -> jax.Array:
    """Point prompts ``(n, P, 2)`` / ``(n, P)`` -> ``(n, R, R)`` bool: the cells holding a
    valid point."""
    s = image_size / r
    cell = jnp.clip(jnp.floor((coords + 0.5) / s).astype(jnp.int32), 0, r - 1)  # (n, P, 2) XY
    flat = jnp.where(labels != INVALID_LABEL, cell[..., 1] * r + cell[..., 0], -1)
    return (flat[:, :, None] == jnp.arange(r * r)).any(axis=1).reshape(-1, r, r)


def region_valid_from_hw(resized_hw: jax.Array, low_res: int, image_size: int) -> jax.Array:
    """``(n, 2)`` resized (h, w) in the input frame -> ``(n, R, R)`` bool un-padded cells."""
    s = image_size / low_res
    hw = jnp.ceil(resized_hw.astype(jnp.float32) / s)
    ar = jnp.arange(low_res, dtype=jnp.float32)
    return (ar[None, :, None] < hw[:, 0, None, None]) & (ar[None, None, :] < hw[:, 1, None, None])


def simulate(
    decode_fn: DecodeFn,
    key: jax.Array,
    target: jax.Array,
    points: jax.Array,
    boxes: jax.Array,
    sim: SimConfig,
    image_size: int,
    region_valid: jax.Array | None = None,
    text_first: jax.Array | None = None,
):
    """Run the ``P`` decoder passes for ``n`` masks.

    Args:
      decode_fn: see :data:`DecodeFn` (closes over params and image embeddings).
      target: ``(n, R, R)`` bool GT; points ``(n, 2)``, boxes ``(n, 4)``: GT prompts.
      text_first: optional ``(n,)`` bool: rows whose first prompt is the text token.
    Returns a dict:
      ``first_logits`` ``(n, 3, R, R)``, ``first_iou`` ``(n, 3)`` (pass 0, multimask);
      ``logits`` ``(P-1, n, R, R)``, ``iou`` ``(P-1, n)`` (passes 1..P-1, single mask);
      ``coords`` ``(n, P, 2)``, ``labels`` ``(n, P)``, ``boxes`` ``(n, 4)``,
      ``box_valid`` ``(n,)``, ``add_point`` ``(n, P)`` (the schedule) - the prompts used.
    """
    n, r = target.shape[0], target.shape[-1]
    p = sim.num_passes
    if sim.remat:
        decode_fn = jax.checkpoint(decode_fn, static_argnums=(6,))
    k_init, k_sched, k_passes = jax.random.split(key, 3)
    coords, labels, boxes, box_valid = initial_prompts(k_init, points, boxes, sim, image_size)
    if text_first is not None:
        labels = labels.at[:, 0].set(jnp.where(text_first, INVALID_LABEL, labels[:, 0]))
        box_valid = box_valid & ~text_first
    add_point = pass_schedule(k_sched, n, sim)
    if sim.farthest_prob > 0:  # the protocol's first click: the GT cell farthest from the boundary
        k_pick, k_in = jax.random.split(jax.random.fold_in(k_init, 1))
        d = boundary_sq_distance(target if region_valid is None else target & region_valid).reshape(n, r * r)
        idx = jnp.argmax(d, axis=1)
        centre = _cell_points(k_in, idx // r, idx % r, r, image_size, sim.point_in_cell)
        pick = jax.random.bernoulli(k_pick, sim.farthest_prob, (n,)) & (d.max(axis=1) > 0)
        coords = coords.at[:, 0].set(jnp.where(pick[:, None], centre, coords[:, 0]))

    no_mask = jnp.zeros((n, r, r), jnp.float32)
    first_logits, first_iou = decode_fn(
        coords, labels, boxes, box_valid, no_mask, jnp.zeros((n,), bool), True
    )
    if text_first is not None:
        one, one_iou = decode_fn(coords, labels, boxes, box_valid, no_mask, jnp.zeros((n,), bool), False)
        first_logits = jnp.where(text_first[:, None, None, None], one, first_logits)
        first_iou = jnp.where(text_first[:, None], one_iou, first_iou)
    best = jnp.argmax(first_iou, axis=1)
    prev = jnp.take_along_axis(first_logits, best[:, None, None, None], 1)[:, 0]
    out = dict(
        first_logits=first_logits, first_iou=first_iou, boxes=boxes, box_valid=box_valid, add_point=add_point
    )
    if p == 1:
        out.update(
            logits=jnp.zeros((0, n, r, r), first_logits.dtype),
            iou=jnp.zeros((0, n), first_iou.dtype),
            coords=coords,
            labels=labels,
        )
        return out

    slots = jnp.arange(p)

    def one_pass(carry, xs):
        coords, labels, prev = carry
        t, k, add = xs
        prev = jax.lax.stop_gradient(prev).astype(jnp.float32)
        if sim.farthest_prob < 1:
            xy, lab, found = sample_error_points(k, prev, target, region_valid, image_size, sim.point_in_cell)
        if sim.farthest_prob > 0:
            k_pick, k_far = jax.random.split(jax.random.fold_in(k, 1))
            clicked = clicked_cells(coords, labels, r, image_size)
            far = farthest_error_points(
                k_far, prev, target, region_valid, clicked, image_size, sim.point_in_cell
            )
            if sim.farthest_prob == 1:
                xy, lab, found = far
            else:
                pick = jax.random.bernoulli(k_pick, sim.farthest_prob, (n,))
                xy = jnp.where(pick[:, None], far[0], xy)
                lab, found = jnp.where(pick, far[1], lab), jnp.where(pick, far[2], found)
        lab = jnp.where(add & found, lab, INVALID_LABEL)
        here = slots[None, :] == t
        coords = jnp.where(here[..., None], xy[:, None, :], coords)
        labels = jnp.where(here, lab[:, None], labels)
        logits, iou = decode_fn(coords, labels, boxes, box_valid, prev, jnp.ones((n,), bool), False)
        return (coords, labels, logits[:, 0]), (logits[:, 0], iou[:, 0])

    xs = (jnp.arange(1, p), jax.random.split(k_passes, p - 1), add_point[:, 1:].T)
    (coords, labels, _), (logits, iou) = jax.lax.scan(
        one_pass, (coords, labels, prev), xs, unroll=max(1, sim.unroll)
    )
    out.update(logits=logits, iou=iou, coords=coords, labels=labels)
    return out
