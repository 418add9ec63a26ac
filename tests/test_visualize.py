"""Overlay pictures: masks tinted, prompts drawn where asked."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sam_jax.visualize import BACKGROUND, FOREGROUND, mask_colours, overlay, save_overlay


def test_overlay_tints_masks_and_draws_prompts(tmp_path):
    image = np.full((100, 120, 3), 100, np.uint8)
    masks = np.zeros((2, 100, 120), bool)
    masks[0, 10:50, 10:60] = True
    masks[1, 60:90, 70:110] = True
    path = tmp_path / "o.png"
    out = save_overlay(
        path,
        image,
        masks=masks,
        points=np.array([[100, 20], [30, 80]]),
        labels=np.array([1, 0]),
        boxes=np.array([[5, 55, 40, 95]]),
        alpha=0.5,
        point_radius=4,
    )
    np.testing.assert_array_equal(np.asarray(Image.open(path)), out)
    colours = mask_colours(2).astype(int)
    # Interior of each mask: half image, half its colour; outline: pure colour.
    np.testing.assert_allclose(out[30, 30], (100 + colours[0]) / 2, atol=1)
    np.testing.assert_allclose(out[75, 90], (100 + colours[1]) / 2, atol=1)
    np.testing.assert_array_equal(out[10, 30], colours[0])
    # Outside masks and prompts the image is untouched.
    np.testing.assert_array_equal(out[5, 115], [100, 100, 100])
    # Foreground point green at (x=100, y=20), background red at (30, 80).
    np.testing.assert_array_equal(out[20, 100], FOREGROUND)
    np.testing.assert_array_equal(out[80, 30], BACKGROUND)
    # The box outline passes through its left edge.
    assert not np.array_equal(out[70, 5], [100, 100, 100])
    assert not np.array_equal(colours[0], colours[1])


def test_overlay_validates():
    image = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="masks"):
        overlay(image, masks=np.zeros((1, 5, 5), bool))
    with pytest.raises(ValueError, match="uint8"):
        overlay(image.astype(np.float32))
    with pytest.raises(ValueError, match="labels"):
        overlay(image, points=np.zeros((2, 2)), labels=np.array([1]))
