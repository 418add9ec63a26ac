"""Flax Linen modules of SAM: one file per network of the paper (section 3)."""

from sam_jax.modeling.image_encoder import ImageEncoderViT
from sam_jax.modeling.mask_decoder import MaskDecoder
from sam_jax.modeling.prompt_encoder import INVALID_LABEL, PAD_LABEL, PromptEncoder
from sam_jax.modeling.sam import Sam, SamConfig, postprocess_masks
from sam_jax.modeling.transformer import TwoWayTransformer

__all__ = [
    "ImageEncoderViT",
    "MaskDecoder",
    "PromptEncoder",
    "TwoWayTransformer",
    "Sam",
    "SamConfig",
    "postprocess_masks",
    "INVALID_LABEL",
    "PAD_LABEL",
]
