"""Input geometry and pixel constants of SAM, in numpy only (paper section 3, Appendix A).

The image encoder takes a square ``S x S`` input (``S = 1024``): an image
``(H, W)`` is resized so that its longest side is ``S`` and zero-padded
bottom/right; pixels are normalised with the ImageNet mean and std (RGB,
0-255). Prompt coordinates follow the resize. Everything here is plain numpy
(PIL for the image resize, imported on use), so it is shared by the predictor,
the model and the jax-free data pipeline (``data.preprocess``).

* :func:`resized_shape`: ``(int(H*s + 0.5), int(W*s + 0.5))`` with ``s = S / max(H, W)``,
  each side at least 1;
* :func:`apply_coords` / :func:`apply_boxes`: XY points and XYXY boxes into the resized frame;
* :func:`normalize`: ``(x - PIXEL_MEAN) / PIXEL_STD`` as float32 (numpy or jax arrays);
* :func:`pad_to_square`: zero-pad ``(h, w, ...)`` bottom/right to ``(S, S, ...)``;
* :class:`ResizeLongestSide`: the official transform object of ``SamPredictor``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _frozen(values: tuple[float, ...]) -> np.ndarray:
    a = np.array(values, np.float32)
    a.setflags(write=False)
    return a


PIXEL_MEAN = _frozen((123.675, 116.28, 103.53))
"""``(3,)`` float32 RGB mean (0-255 scale) subtracted from the input pixels."""
PIXEL_STD = _frozen((58.395, 57.12, 57.375))
"""``(3,)`` float32 RGB standard deviation (0-255 scale) dividing the input pixels."""


def resized_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """``(h', w')`` of an ``h x w`` image whose longest side is scaled to ``long_side``; each
    side is at least 1 (an extremely elongated image would otherwise round to 0)."""
    scale = long_side * 1.0 / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def apply_coords(coords: Any, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """``(..., 2)`` XY in an image of ``original_size`` ``(H, W)`` -> the resized frame (float64)."""
    old_h, old_w = original_size
    new_h, new_w = resized_shape(old_h, old_w, long_side)
    coords = np.array(coords, dtype=np.float64, copy=True)
    coords[..., 0] *= new_w / old_w
    coords[..., 1] *= new_h / old_h
    return coords


def apply_boxes(boxes: Any, original_size: tuple[int, int], long_side: int) -> np.ndarray:
    """``(..., 4)`` XYXY boxes -> ``(B, 4)`` in the resized frame (float64)."""
    corners = np.asarray(boxes).reshape(-1, 2, 2)
    return apply_coords(corners, original_size, long_side).reshape(-1, 4)


def normalize(pixels: Any, out: np.ndarray | None = None) -> Any:
    """RGB pixels (0-255) -> float32 ``(pixels - PIXEL_MEAN) / PIXEL_STD``. ``(..., 3)``.

    Uses only ``astype`` and arithmetic, so a jax array (also inside ``jax.jit``)
    gives a jax array and a numpy array a numpy array. With ``out`` (a float32
    numpy array or view of the same shape) the result is computed in place there,
    with the same float32 operations, and ``out`` is returned.
    """
    if out is None:
        return (pixels.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD
    out[...] = pixels
    # Broadcasting a (3,) operand runs numpy's inner loop 3 elements at a time: merge
    # the last two axes (rows of W*3 values, no copy) and tile the mean and std.
    rows, mean, std = out, PIXEL_MEAN, PIXEL_STD
    if out.ndim >= 2:
        try:
            rows = np.reshape(out, out.shape[:-2] + (-1,), copy=False)
            mean, std = np.tile(PIXEL_MEAN, out.shape[-2]), np.tile(PIXEL_STD, out.shape[-2])
        except ValueError:  # axes that cannot be merged without a copy
            rows = out
    rows -= mean
    rows /= std
    return out


def pad_to_square(x: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad ``(h, w, ...)`` bottom/right to ``(size, size, ...)`` (same dtype)."""
    h, w = x.shape[:2]
    if max(h, w) > size:
        raise ValueError(f"cannot pad an image of {h}x{w} to a {size}x{size} square")
    out = np.zeros((size, size) + x.shape[2:], x.dtype)
    out[:h, :w] = x
    return out


class ResizeLongestSide:
    """Resize images, points and boxes so the image's long side is ``target_length``.

    The resized shape is :func:`resized_shape`; images are resized with PIL bilinear
    on uint8, as the official transform does.
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = int(target_length)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        return resized_shape(oldh, oldw, long_side_length)

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` uint8 -> ``(h, w, 3)`` uint8, PIL bilinear."""
        from PIL import Image

        h, w = resized_shape(image.shape[0], image.shape[1], self.target_length)
        return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """``(..., 2)`` XY in an image of ``original_size`` (H, W) -> resized frame (float64)."""
        return apply_coords(coords, original_size, self.target_length)

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """``(..., 4)`` XYXY boxes -> ``(B, 4)`` in the resized frame (float64)."""
        return apply_boxes(boxes, original_size, self.target_length)


__all__ = [
    "PIXEL_MEAN",
    "PIXEL_STD",
    "resized_shape",
    "apply_coords",
    "apply_boxes",
    "normalize",
    "pad_to_square",
    "ResizeLongestSide",
]
