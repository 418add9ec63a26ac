"""CLIP in Flax (image and text towers, BPE tokenizer, OpenAI checkpoint reader) for
SAM's text prompts (Kirillov et al. 2023, section 7.5)."""

from sam_jax.clip.model import CLIP, CLIP_CONFIGS, ClipConfig, ClipModel, build_clip
from sam_jax.clip.tokenizer import tokenize

__all__ = ["CLIP", "CLIP_CONFIGS", "ClipConfig", "ClipModel", "build_clip", "tokenize"]
