"""The SAM training losses (paper Appendix A; REFERENCE section 6).

Per decoder pass and mask: ``focal_weight * focal + dice_weight * dice`` (20:1)
on the mask logits, plus ``iou_weight * (iou_pred - IoU(mask > 0, GT))**2`` for
the IoU head (the target is the true IoU of each predicted mask, no gradient).

* Pass 0 (multimask, 3 outputs): only the output with the lowest mask loss is
  back-propagated (selection without gradient); the IoU head is trained on all
  three outputs (mean).
* Passes 1..P-1 (more than one prompt): the single-mask output (token 0).

The loss of a mask is the mean over its passes; the batch loss is the mean over
valid masks (``mask_valid``; padded masks contribute nothing, also when all are
padded: the loss is then 0).

Resolution: losses are computed at the GT targets' resolution ``T``. By default
``T = R``: the model's low-res ``R x R`` logits (256 for 1024 input) against
``R x R`` targets from the data pipeline. Finer targets (``data.target_size`` = a
multiple of ``R``) have the logits upsampled bilinearly to ``T`` first, as
``postprocess_masks`` upsamples them at inference, so the loss sees where the
upsampled mask's boundary falls inside a low-res cell. ``loss.resolution > T``
upsamples the logits bilinearly and the targets by pixel repetition to that size.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sam_jax.modeling.sam import resize_bilinear


@dataclasses.dataclass(frozen=True)
class LossConfig:
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    resolution: int = 0
    min_target_cells: int = 1  # used by the train step: smaller GT targets are ignored


def focal_loss(logits: jax.Array, target: jax.Array, alpha: float = 0.25, gamma: float = 2.0) -> jax.Array:
    """Sigmoid focal loss, mean over the last two axes: ``(..., H, W) -> (...)``."""
    x = logits.astype(jnp.float32)
    t = target.astype(jnp.float32)
    p = jax.nn.sigmoid(x)
    ce = jnp.maximum(x, 0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss.mean(axis=(-2, -1))


def dice_loss(logits: jax.Array, target: jax.Array, smooth: float = 1.0) -> jax.Array:
    """``1 - (2|P.T| + 1) / (|P| + |T| + 1)`` on sigmoid probabilities: ``(..., H, W) -> (...)``."""
    p = jax.nn.sigmoid(logits.astype(jnp.float32))
    t = target.astype(jnp.float32)
    inter = (p * t).sum(axis=(-2, -1))
    return 1.0 - (2.0 * inter + smooth) / (p.sum(axis=(-2, -1)) + t.sum(axis=(-2, -1)) + smooth)


def mask_iou(logits: jax.Array, target: jax.Array) -> jax.Array:
    """IoU of ``logits > 0`` with the GT: ``(..., H, W) -> (...)``; 1 when both are empty."""
    pred = logits > 0
    t = target.astype(bool)
    inter = (pred & t).sum(axis=(-2, -1)).astype(jnp.float32)
    union = (pred | t).sum(axis=(-2, -1)).astype(jnp.float32)
    return jnp.where(union > 0, inter / jnp.maximum(union, 1.0), 1.0)


def _at_loss_resolution(logits: jax.Array, target: jax.Array, res: int):
    """Logits and targets at the loss resolution: at least the targets' side ``T``
    (logits of side ``R < T`` are upsampled bilinearly, as ``postprocess_masks`` does),
    ``res`` if larger (targets then repeated)."""
    r, t = logits.shape[-1], target.shape[-1]
    res = max(res or t, t)
    if res % t:
        raise ValueError(f"loss.resolution ({res}) must be a multiple of the target size ({t})")
    if r != res:
        logits = resize_bilinear(logits.astype(jnp.float32), (res, res))
    if t != res:
        f = res // t
        target = jnp.repeat(jnp.repeat(target, f, axis=-2), f, axis=-1)
    return logits, target


def _terms(logits, target, iou_pred, cfg: LossConfig):
    logits, target = _at_loss_resolution(logits, target, cfg.resolution)
    focal = focal_loss(logits, target, cfg.focal_alpha, cfg.focal_gamma)
    dice = dice_loss(logits, target)
    true_iou = jax.lax.stop_gradient(mask_iou(logits, target))
    iou_mse = (iou_pred.astype(jnp.float32) - true_iou) ** 2
    return focal, dice, iou_mse, true_iou


def sam_loss(sim_out: dict, target: jax.Array, valid: jax.Array, cfg: LossConfig):
    """Total loss and metrics of one simulated batch.

    Args:
      sim_out: :func:`train.prompt_simulation.simulate` output (``first_logits``
        ``(n, 3, R, R)``, ``first_iou`` ``(n, 3)``, ``logits`` ``(P-1, n, R, R)``,
        ``iou`` ``(P-1, n)``).
      target: ``(n, T, T)`` GT (``T`` a multiple of the logits' ``R``); valid: ``(n,)`` bool.
    Returns:
      scalar loss, dict of scalar metrics (``focal``, ``dice``, ``iou_mse``,
      ``miou_first`` - IoU of the highest-predicted-IoU mask of pass 0 -,
      ``miou_first_oracle`` - best of the 3 -, ``miou_last``, ``num_masks``).
    """
    t = target[:, None]
    f0, d0, i0, iou0 = _terms(sim_out["first_logits"], t, sim_out["first_iou"], cfg)  # (n, 3)
    m0 = cfg.focal_weight * f0 + cfg.dice_weight * d0
    k = jnp.argmin(jax.lax.stop_gradient(m0), axis=1)[:, None]
    pick = lambda a: jnp.take_along_axis(a, k, 1)[:, 0]
    focal, dice, iou_mse = [pick(f0)], [pick(d0)], [i0.mean(axis=1)]
    passes = sim_out["logits"].shape[0]
    if passes:
        f, d, i, iou_last = _terms(sim_out["logits"], target[None], sim_out["iou"], cfg)  # (P-1, n)
        focal.append(f.sum(0))
        dice.append(d.sum(0))
        iou_mse.append(i.sum(0))
    n_pass = passes + 1
    focal, dice, iou_mse = (sum(x) / n_pass for x in (focal, dice, iou_mse))  # (n,)
    per_mask = cfg.focal_weight * focal + cfg.dice_weight * dice + cfg.iou_weight * iou_mse

    w = valid.astype(jnp.float32)
    count = w.sum()
    mean = lambda x: (x * w).sum() / jnp.maximum(count, 1.0)
    best = jnp.argmax(sim_out["first_iou"], axis=1)[:, None]
    miou_first = jnp.take_along_axis(iou0, best, 1)[:, 0]
    metrics = dict(
        focal=mean(focal),
        dice=mean(dice),
        iou_mse=mean(iou_mse),
        miou_first=mean(miou_first),
        miou_first_oracle=mean(iou0.max(axis=1)),
        miou_last=mean(iou_last[-1] if passes else miou_first),
        num_masks=count,
    )
    loss = mean(per_mask)
    metrics["loss"] = loss
    return loss, metrics
