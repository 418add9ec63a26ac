"""The mask decoder: prompt tokens + image embedding -> mask logits and IoU scores.

Learned output tokens (one IoU token, ``num_multimask_outputs + 1`` mask tokens)
are prepended to the prompt tokens and run through the two-way transformer with
the image embedding (plus the dense prompt embedding). The image tokens are
upscaled 4x by transposed convolutions; each mask token passes a small
hypernetwork MLP whose output, dotted with the upscaled features, gives one
``256 x 256`` low-res mask. The IoU token predicts each mask's IoU.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from sam_jax.modeling.common import MLP, ConvTranspose2x2, Dtype, gelu, layer_norm, partitioned
from sam_jax.modeling.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts masks from an image embedding and prompt embeddings."""

    transformer_dim: int = 256
    num_multimask_outputs: int = 3
    transformer_depth: int = 2
    transformer_heads: int = 8
    transformer_mlp_dim: int = 2048
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self,
        image_embeddings: jax.Array,
        image_pe: jax.Array,
        sparse_prompt_embeddings: jax.Array,
        dense_prompt_embeddings: jax.Array,
        multimask_output: bool,
        token_valid: jax.Array | None = None,
        image_cache: dict[str, jax.Array] | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        """Decode masks.

        Args:
          image_embeddings: ``(B, 64, 64, E)``, or ``(1, 64, 64, E)`` shared by all prompts.
          image_pe: ``(64, 64, E)``.
          sparse_prompt_embeddings: ``(B, T, E)``.
          dense_prompt_embeddings: ``(B, 64, 64, E)``, or ``(1, 64, 64, E)`` shared by all
            prompts (with a shared image embedding, the image tokens of the first
            transformer block are then projected once, not once per prompt).
          multimask_output: return the 3 multimask outputs (else the single one).
          token_valid: optional ``(B, T)`` validity of the sparse tokens.
          image_cache: optional first-block image projections of ``image_embeddings +
            dense_prompt_embeddings`` (:func:`~sam_jax.modeling.transformer.first_layer_image_projections`).
        Returns:
          masks ``(B, K, 256, 256)`` low-res logits and iou ``(B, K)``, K = 3 or 1.
        """
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        e = self.transformer_dim
        n_masks = self.num_multimask_outputs + 1
        b = sparse_prompt_embeddings.shape[0]

        def token_table(name, n):
            return nn.Embed(
                n,
                e,
                param_dtype=self.param_dtype,
                name=name,
                embedding_init=partitioned(nn.initializers.normal(1.0), (None, "embed")),
            ).embedding

        iou_token = token_table("iou_token", 1)
        mask_tokens = token_table("mask_tokens", n_masks)
        output_tokens = jnp.concatenate([iou_token, mask_tokens], 0).astype(self.dtype)
        output_tokens = jnp.broadcast_to(output_tokens, (b, 1 + n_masks, e))
        tokens = jnp.concatenate([output_tokens, sparse_prompt_embeddings.astype(self.dtype)], axis=1)
        if token_valid is not None:
            token_valid = jnp.concatenate([jnp.ones((b, 1 + n_masks), bool), token_valid], 1)

        src = image_embeddings.astype(self.dtype) + dense_prompt_embeddings.astype(self.dtype)
        hs, src = TwoWayTransformer(
            self.transformer_depth,
            e,
            self.transformer_heads,
            self.transformer_mlp_dim,
            name="transformer",
            **kw,
        )(src, image_pe, tokens, token_valid, image_cache)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + n_masks, :]

        h, w = image_embeddings.shape[1:3]
        src = jnp.broadcast_to(src.reshape(-1, h, w, e), (b, h, w, e))
        # Checkpoint keys output_upscaling.{0,1,3}; 2 and 4 are GELUs. Two 2x upscalings
        # in blocked layout: pixel (y, x) = (4i + 2a + p, 4j + 2c + q) of the 4h x 4w
        # map is up[:, i, j, a, c, p, q]; only the small mask logits get interleaved.
        up = ConvTranspose2x2(e // 4, name="output_upscaling_0", **kw)(src)  # (B,h,w,2,2,e/4)
        up = gelu(layer_norm(1e-6, self.dtype, self.param_dtype, "output_upscaling_1")(up))
        up = gelu(ConvTranspose2x2(e // 8, name="output_upscaling_3", **kw)(up))

        hyper_in = jnp.stack(
            [
                MLP(e, e // 8, 3, name=f"output_hypernetworks_mlps_{i}", **kw)(mask_tokens_out[:, i])
                for i in range(n_masks)
            ],
            axis=1,
        )  # (B, n_masks, e/8)
        masks = jnp.einsum("bko,bijacpqo->bkiapjcq", hyper_in, up)
        masks = masks.reshape(b, n_masks, 4 * h, 4 * w)
        iou_pred = MLP(
            self.iou_head_hidden_dim, n_masks, self.iou_head_depth, name="iou_prediction_head", **kw
        )(iou_token_out)

        if multimask_output:
            return masks[:, 1:], iou_pred[:, 1:]
        return masks[:, :1], iou_pred[:, :1]
