"""sam-jax: Segment Anything in JAX/Flax."""

from sam_jax.build_sam import SamModel, VARIANTS, build_sam, sam_model_registry
from sam_jax.predictor import SamPredictor
from sam_jax.automatic_mask_generator import SamAutomaticMaskGenerator

__all__ = ["SamModel", "VARIANTS", "build_sam", "sam_model_registry",
           "SamPredictor", "SamAutomaticMaskGenerator"]
