"""The official ``segment-anything`` release as the parity and speed reference.

Builds the official PyTorch SAM for any :class:`SamConfig`, fills it with
random weights (every tensor, including those the reference initialises to
zero), saves it with ``torch.save`` and loads the same file through our
loader, so both implementations run on identical weights. Used by the parity
tests and the benchmarks; importing it needs torch and ``segment-anything`` (the
``test`` extras) and raises ``ImportError`` without them.
"""

from __future__ import annotations

import functools

import numpy as np
import segment_anything.modeling as sa_modeling
import torch

from sam_jax.geometry import PIXEL_MEAN, PIXEL_STD
from sam_jax.modeling.sam import SamConfig
from sam_jax.sam_model import SamModel, build_sam


def official_sam(config: SamConfig, seed: int = 0):
    """The official ``Sam`` for ``config`` with random weights (eval mode)."""
    torch.manual_seed(seed)
    e = config.prompt_embed_dim
    grid = config.embedding_size
    encoder = sa_modeling.ImageEncoderViT(
        depth=config.encoder_depth,
        embed_dim=config.encoder_embed_dim,
        img_size=config.image_size,
        mlp_ratio=4,
        norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=config.encoder_num_heads,
        patch_size=config.patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=tuple(config.encoder_global_attn_indexes),
        window_size=config.window_size,
        out_chans=e,
    )
    prompt = sa_modeling.PromptEncoder(
        embed_dim=e,
        image_embedding_size=(grid, grid),
        input_image_size=(config.image_size, config.image_size),
        mask_in_chans=config.mask_in_chans,
    )
    decoder = sa_modeling.MaskDecoder(
        num_multimask_outputs=3,
        transformer=sa_modeling.TwoWayTransformer(
            depth=config.decoder_depth,
            embedding_dim=e,
            mlp_dim=config.decoder_mlp_dim,
            num_heads=config.decoder_heads,
        ),
        transformer_dim=e,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    sam = sa_modeling.Sam(
        image_encoder=encoder,
        prompt_encoder=prompt,
        mask_decoder=decoder,
        pixel_mean=list(PIXEL_MEAN),
        pixel_std=list(PIXEL_STD),
    )
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in sam.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * noise)  # LayerNorm scales
            elif "rel_pos" in name or "pos_embed" in name:
                p.copy_(0.1 * noise)
            elif p.ndim == 1:
                p.copy_(0.05 * noise)  # biases
            elif name.endswith(
                (
                    "point_embeddings.0.weight",
                    "point_embeddings.1.weight",
                    "point_embeddings.2.weight",
                    "point_embeddings.3.weight",
                    "not_a_point_embed.weight",
                    "no_mask_embed.weight",
                    "iou_token.weight",
                    "mask_tokens.weight",
                )
            ):
                p.copy_(noise)
            else:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(noise / np.sqrt(fan_in))
    return sam.eval()


def official_and_ours(config: SamConfig, tmp_path, seed: int = 0, **kwargs):
    """``(official torch Sam, our SamModel)`` sharing random weights via a ``.pth``."""
    sam = official_sam(config, seed)
    path = tmp_path / f"sam_{seed}.pth"
    torch.save(sam.state_dict(), path)
    return sam, build_sam(config, checkpoint=path, **kwargs)


def to_torch(x) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32)))


__all__ = ["official_sam", "official_and_ours", "to_torch", "SamModel", "torch"]


def official_onnx_decoder(sam, dummy: dict, return_single_mask: bool = False) -> bytes:
    """The official exporter's ONNX decoder (``SamOnnxModel`` traced on the ``dummy``
    inputs, dynamic number of points, opset 17), serialised."""
    import io
    import warnings

    from segment_anything.utils.onnx import SamOnnxModel

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            SamOnnxModel(sam, return_single_mask=return_single_mask),
            tuple(dummy.values()),
            buf,
            opset_version=17,
            input_names=list(dummy),
            dynamo=False,
            output_names=["masks", "iou_predictions", "low_res_masks"],
            dynamic_axes={"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        )
    return buf.getvalue()
