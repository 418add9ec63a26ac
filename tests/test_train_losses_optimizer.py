"""The SAM losses and the optimiser (layer decay, weight-decay mask, freezing, schedule)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.tiny import get_config
from data.synthetic_batch import make_batch
from sam_jax.modeling.sam import resize_bilinear
from sam_jax.modeling.variants import init_variables
from train.losses import LossConfig, dice_loss, focal_loss, mask_iou, sam_loss
from train.optimizer import build_optimizer, decay_mask, layer_id, make_schedule
from train.train_step import build_module, low_res_target


def test_focal_dice_iou_match_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (5, 16, 16)).astype(np.float32)
    t = rng.random((5, 16, 16)) < 0.3
    p = 1 / (1 + np.exp(-x.astype(np.float64)))
    ce = -(t * np.log(p) + (1 - t) * np.log(1 - p))
    pt = np.where(t, p, 1 - p)
    focal = (np.where(t, 0.25, 0.75) * ce * (1 - pt) ** 2).mean((1, 2))
    dice = 1 - (2 * (p * t).sum((1, 2)) + 1) / (p.sum((1, 2)) + t.sum((1, 2)) + 1)
    iou = ((x > 0) & t).sum((1, 2)) / ((x > 0) | t).sum((1, 2))
    np.testing.assert_allclose(focal_loss(x, t), focal, rtol=1e-5)
    np.testing.assert_allclose(dice_loss(x, t), dice, rtol=1e-5)
    np.testing.assert_allclose(mask_iou(x, t), iou, rtol=1e-6)


def _sim_out(n, r, passes, seed=0):
    rng = np.random.default_rng(seed)
    return dict(
        first_logits=jnp.asarray(rng.normal(0, 2, (n, 3, r, r)), jnp.float32),
        first_iou=jnp.asarray(rng.random((n, 3)), jnp.float32),
        logits=jnp.asarray(rng.normal(0, 2, (passes - 1, n, r, r)), jnp.float32),
        iou=jnp.asarray(rng.random((passes - 1, n)), jnp.float32),
    )


def test_sam_loss_min_selection_and_weights():
    n, r, cfg = 6, 8, LossConfig()
    out = _sim_out(n, r, 3)
    target = jnp.asarray(np.random.default_rng(1).random((n, r, r)) < 0.4)
    valid = jnp.ones((n,), bool)
    loss, m = sam_loss(out, target, valid, cfg)
    f0 = np.asarray(focal_loss(out["first_logits"], target[:, None]))
    d0 = np.asarray(dice_loss(out["first_logits"], target[:, None]))
    i0 = (np.asarray(out["first_iou"]) - np.asarray(mask_iou(out["first_logits"], target[:, None]))) ** 2
    k = np.argmin(20 * f0 + d0, 1)
    f = np.asarray(focal_loss(out["logits"], target[None]))
    d = np.asarray(dice_loss(out["logits"], target[None]))
    i = (np.asarray(out["iou"]) - np.asarray(mask_iou(out["logits"], target[None]))) ** 2
    rows = np.arange(n)
    focal = (f0[rows, k] + f.sum(0)) / 3
    dice = (d0[rows, k] + d.sum(0)) / 3
    iou = (i0.mean(1) + i.sum(0)) / 3
    np.testing.assert_allclose(float(loss), (20 * focal + dice + iou).mean(), rtol=1e-5)
    np.testing.assert_allclose(float(m["focal"]), focal.mean(), rtol=1e-5)
    # only the selected multimask output gets a mask-loss gradient
    g = jax.grad(
        lambda fl: sam_loss(dict(out, first_logits=fl), target, valid, LossConfig(iou_weight=0.0))[0]
    )(out["first_logits"])
    g = np.abs(np.asarray(g)).sum((2, 3))
    assert (g[rows, k] > 0).all()
    g[rows, k] = 0
    assert (g == 0).all()


def test_invalid_masks_contribute_nothing():
    n, r = 6, 8
    out = _sim_out(n, r, 4)
    target = jnp.asarray(np.random.default_rng(2).random((n, r, r)) < 0.4)
    valid = jnp.asarray([True, True, False, True, False, False])
    loss, _ = sam_loss(out, target, valid, LossConfig())
    sub = jax.tree_util.tree_map(
        lambda a: a[np.asarray(valid)] if a.shape[0] == n else a[:, np.asarray(valid)], out
    )
    sub_loss, _ = sam_loss(sub, target[np.asarray(valid)], jnp.ones((3,), bool), LossConfig())
    np.testing.assert_allclose(float(loss), float(sub_loss), rtol=1e-6)
    g = jax.grad(lambda o: sam_loss(o, target, valid, LossConfig())[0])(out)
    assert float(jnp.abs(g["logits"][:, ~np.asarray(valid)]).sum()) == 0.0
    none, _ = sam_loss(out, target, jnp.zeros((n,), bool), LossConfig())
    assert float(none) == 0.0


def test_loss_upsampled_resolution():
    out = _sim_out(2, 8, 2)
    target = jnp.asarray(np.random.default_rng(3).random((2, 8, 8)) < 0.5)
    a, _ = sam_loss(out, target, jnp.ones((2,), bool), LossConfig())
    b, _ = sam_loss(out, target, jnp.ones((2,), bool), LossConfig(resolution=32))
    assert np.isfinite(float(b)) and abs(float(a) - float(b)) > 1e-4


def test_finer_targets_compare_upsampled_logits():
    out, valid = _sim_out(2, 8, 3), jnp.ones((2,), bool)
    fine = jnp.asarray(np.random.default_rng(4).random((2, 32, 32)) < 0.5)
    up = dict(out)
    for k in ("first_logits", "logits"):
        up[k] = resize_bilinear(out[k], (32, 32))
    got, got_m = sam_loss(out, fine, valid, LossConfig())
    want, want_m = sam_loss(up, fine, valid, LossConfig())
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    np.testing.assert_allclose(float(got_m["miou_last"]), float(want_m["miou_last"]), rtol=1e-6)
    # a loss resolution above the targets' repeats them, as for targets at R
    twice = jnp.repeat(jnp.repeat(fine, 2, axis=-2), 2, axis=-1)
    a, _ = sam_loss(out, fine, valid, LossConfig(resolution=64))
    b, _ = sam_loss(out, twice, valid, LossConfig())
    np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


def test_low_res_target_majority():
    t = np.zeros((2, 8, 8), bool)
    t[0, 0:2, 0:2] = [[1, 1], [1, 0]]  # 3 of 4 -> cell (0, 0) foreground
    t[0, 2:4, 0:2] = [[1, 0], [0, 0]]  # 1 of 4 -> background
    t[0, 0:2, 2:4] = [[1, 0], [1, 0]]  # a tie counts as foreground
    t[1] = True
    low = np.asarray(low_res_target(jnp.asarray(t), 4))
    want = np.zeros((2, 4, 4), bool)
    want[0, 0, 0] = want[0, 0, 1] = True
    want[1] = True
    np.testing.assert_array_equal(low, want)
    np.testing.assert_array_equal(np.asarray(low_res_target(jnp.asarray(t), 8)), t)
    with pytest.raises(ValueError, match="multiple of the low-res mask size"):
        low_res_target(jnp.asarray(t), 3)


def test_synthetic_batch_finer_targets_reduce_to_the_default():
    coarse, fine = make_batch(3, 2, 2, 64), make_batch(3, 2, 2, 64, target_size=64)
    assert coarse["masks"].shape == (2, 2, 16, 16) and fine["masks"].shape == (2, 2, 64, 64)
    # a mask too small for 16 x 16 cells is invalid there only
    assert (fine["mask_valid"] >= coarse["mask_valid"]).all() and coarse["mask_valid"].sum() >= 3
    reduced = low_res_target(jnp.asarray(fine["masks"].reshape(4, 64, 64)), 16)
    np.testing.assert_array_equal(np.asarray(reduced).reshape(2, 2, 16, 16), coarse["masks"])
    with pytest.raises(ValueError, match="must divide image_size"):
        make_batch(3, 1, 1, 64, target_size=24)


def _abstract_params():
    c = get_config()
    module = build_module(c)
    boxed = jax.eval_shape(functools.partial(init_variables, module), jax.random.key(0))["params"]
    return c, module, nn.unbox(boxed)


def test_layer_ids_and_decay_mask():
    c, module, params = _abstract_params()
    depth = module.config.encoder_depth
    assert layer_id(("image_encoder", "patch_embed", "proj", "kernel"), depth) == 0
    assert layer_id(("image_encoder", "pos_embed"), depth) == 0
    assert layer_id(("image_encoder", "blocks_1", "mlp", "lin1", "kernel"), depth) == 2
    assert layer_id(("image_encoder", "neck_0", "kernel"), depth) == depth + 1
    assert layer_id(("mask_decoder", "iou_token", "embedding"), depth) == depth + 1
    mask = decay_mask(params)
    assert mask["image_encoder"]["blocks_0"]["attn"]["qkv"]["kernel"]
    for no in (
        mask["image_encoder"]["pos_embed"],
        mask["image_encoder"]["blocks_0"]["attn"]["rel_pos_h"],
        mask["image_encoder"]["blocks_0"]["norm1"]["scale"],
        mask["image_encoder"]["blocks_0"]["attn"]["qkv"]["bias"],
        mask["mask_decoder"]["mask_tokens"]["embedding"],
        mask["prompt_encoder"]["pe_layer"]["positional_encoding_gaussian_matrix"],
    ):
        assert not no


def test_optimizer_layer_decay_weight_decay_and_freeze():
    c, module, abstract = _abstract_params()
    depth = module.config.encoder_depth
    optim = ml_collections.ConfigDict(dict(c.optim))
    optim.update(lr=0.1, layer_decay=0.5, weight_decay=0.0, warmup_steps=0, grad_clip_norm=0.0)
    params = jax.tree_util.tree_map(lambda a: jnp.ones(a.shape, a.dtype), abstract)
    grads = jax.tree_util.tree_map(lambda a: jnp.ones(a.shape, a.dtype), abstract)
    tx, _ = build_optimizer(optim, params, depth)
    upd, _ = tx.update(grads, tx.init(params), params)
    # first Adam step with g=1 is -lr * scale (up to eps)
    get = lambda t, *k: np.asarray(functools.reduce(lambda a, b: a[b], k, t))
    np.testing.assert_allclose(
        get(upd, "image_encoder", "patch_embed", "proj", "kernel"), -0.1 * 0.5 ** (depth + 1), rtol=1e-5
    )
    np.testing.assert_allclose(
        get(upd, "image_encoder", "blocks_1", "mlp", "lin1", "bias"), -0.1 * 0.5 ** (depth - 1), rtol=1e-5
    )
    np.testing.assert_allclose(get(upd, "mask_decoder", "iou_token", "embedding"), -0.1, rtol=1e-5)
    assert (get(upd, "prompt_encoder", "pe_layer", "positional_encoding_gaussian_matrix") == 0).all()
    # weight decay: kernels only, decoupled and lr-scaled
    optim.weight_decay = 0.1
    tx, _ = build_optimizer(optim, params, depth)
    zero = jax.tree_util.tree_map(jnp.zeros_like, grads)
    upd, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_allclose(
        get(upd, "mask_decoder", "transformer", "layers_0", "mlp", "lin1", "kernel"), -0.1 * 0.1, rtol=1e-5
    )
    for k in (
        ("mask_decoder", "transformer", "layers_0", "mlp", "lin1", "bias"),
        ("image_encoder", "pos_embed"),
        ("mask_decoder", "mask_tokens", "embedding"),
        ("prompt_encoder", "pe_layer", "positional_encoding_gaussian_matrix"),
    ):
        assert (get(upd, *k) == 0).all(), k


def test_schedule_warmup_and_steps():
    optim = ml_collections.ConfigDict(dict(lr=1.0, warmup_steps=4, decay_steps=(10, 20), decay_factor=0.1))
    s = make_schedule(optim)
    got = [float(s(i)) for i in (0, 1, 3, 9, 10, 19, 20, 100)]
    np.testing.assert_allclose(got, [0.25, 0.5, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)
