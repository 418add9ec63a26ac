"""The prompt encoder + mask decoder as an ONNX graph with the official interface.

The official release exports the light half of SAM (prompt encoder, mask
decoder and mask postprocessing) to ONNX so that a browser can decode masks
from a precomputed image embedding in real time (Kirillov et al. 2023, section 3
"Efficiency", and the released web demo). This module writes the same model,
with the same inputs and outputs, from our Flax parameters, node by node with
``onnx.helper``:

inputs
    ``image_embeddings (1, E, g, g)``, ``point_coords (1, N, 2)`` XY in the
    ``S x S`` input frame (N dynamic), ``point_labels (1, N)`` float (1
    foreground, 0 background, 2 / 3 top-left / bottom-right box corner, -1 the
    padding point to add when there is no box), ``mask_input (1, 1, S/4, S/4)``
    logits, ``has_mask_input (1,)`` 0 or 1, ``orig_im_size (2,)`` float (H, W).
outputs
    ``masks (1, K, H, W)`` logits at the original size, ``iou_predictions (1, K)``
    and ``low_res_masks (1, K, S/4, S/4)``; ``K = 4`` (single-mask output first),
    or 1 with ``return_single_mask``: the multimask output with the best score
    when there is one point besides the padding point, else the single-mask output.

``use_stability_score`` replaces the predicted IoUs by the stability score of the
low-res logits (IoU of the masks thresholded at +1 and -1);
``return_extra_metrics`` adds ``stability_scores (1, K)`` and ``areas (1, K)``
(int64 pixel counts) of the upscaled masks, in the official output order
``masks, iou_predictions, stability_scores, areas, low_res_masks``.

Unlike the official tracer-based export, the crop of the padding is computed in
the graph from ``orig_im_size``, so one model serves images of any aspect ratio.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Weight of the single-mask choice: score + (num_points - 2.5) * 1000 on output 0 picks
# the single-mask output for two or more real points (the padding point counts).
_SINGLE_MASK_REWEIGHT = 1000.0
_STABILITY_OFFSET = 1.0
MASK_THRESHOLD = 0.0


class _Graph:
    """Accumulates ONNX nodes and initialisers under generated names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value: Any, name: str = "c", dtype: Any = np.float32) -> str:
        name = self._name(name)
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def ints(self, values, name: str = "shape") -> str:
        return self.const(np.asarray(values, np.int64), name, np.int64)

    def op(self, op_type: str, *inputs: str, outputs: int = 1, name: str | None = None, **attrs: Any):
        outs = [self._name(name or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, **attrs))
        return outs[0] if outputs == 1 else outs


def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


def _linear(g: _Graph, x: str, p: dict) -> str:
    """Dense layer: ``(..., in) @ kernel (in, out) + bias``."""
    return g.op(
        "Add", g.op("MatMul", x, g.const(_f32(p["kernel"]), "kernel")), g.const(_f32(p["bias"]), "bias")
    )


def _layer_norm(g: _Graph, x: str, p: dict, eps: float) -> str:
    """LayerNorm over the last axis (tokens, or NHWC maps as ``LayerNorm2d``)."""
    return g.op(
        "LayerNormalization",
        x,
        g.const(_f32(p["scale"]), "scale"),
        g.const(_f32(p["bias"]), "bias"),
        axis=-1,
        epsilon=eps,
    )


def _gelu(g: _Graph, x: str) -> str:
    """Exact GELU ``x * (1 + erf(x / sqrt 2)) / 2`` (opset 17 has no Gelu)."""
    erf = g.op("Erf", g.op("Mul", x, g.const(1.0 / math.sqrt(2.0))))
    return g.op("Mul", g.op("Mul", x, g.const(0.5)), g.op("Add", erf, g.const(1.0)))


def _mlp(g: _Graph, x: str, p: dict, num_layers: int) -> str:
    """``layers_0 .. layers_{n-1}`` Linear layers with ReLU between them."""
    for i in range(num_layers):
        x = _linear(g, x, p[f"layers_{i}"])
        if i < num_layers - 1:
            x = g.op("Relu", x)
    return x


def _attention(g: _Graph, q: str, k: str, v: str, p: dict, heads: int) -> str:
    """Multi-head attention with q/k/v/out projections: ``(1, Tq, E) -> (1, Tq, E)``."""
    inner = np.shape(p["q_proj"]["kernel"])[1]
    d = inner // heads
    split = g.ints([0, 0, heads, d])
    qh = g.op("Transpose", g.op("Reshape", _linear(g, q, p["q_proj"]), split), perm=[0, 2, 1, 3])
    kh = g.op("Transpose", g.op("Reshape", _linear(g, k, p["k_proj"]), split), perm=[0, 2, 3, 1])
    vh = g.op("Transpose", g.op("Reshape", _linear(g, v, p["v_proj"]), split), perm=[0, 2, 1, 3])
    scores = g.op("Mul", g.op("MatMul", qh, kh), g.const(d**-0.5))
    out = g.op("MatMul", g.op("Softmax", scores, axis=-1), vh)
    out = g.op("Reshape", g.op("Transpose", out, perm=[0, 2, 1, 3]), g.ints([0, 0, inner]))
    return _linear(g, out, p["out_proj"])


def _nchw(g: _Graph, x: str) -> str:
    return g.op("Transpose", x, perm=[0, 3, 1, 2])


def _nhwc(g: _Graph, x: str) -> str:
    return g.op("Transpose", x, perm=[0, 2, 3, 1])


def _fourier(g: _Graph, unit_xy: str, gaussian: str) -> str:
    """Random Fourier features ``sin, cos(2 pi (2 xy - 1) G)`` of ``(..., 2)`` in [0, 1]."""
    c = g.op("Sub", g.op("Mul", unit_xy, g.const(2.0)), g.const(1.0))
    c = g.op("Mul", g.op("MatMul", c, gaussian), g.const(2.0 * math.pi))
    return g.op("Concat", g.op("Sin", c), g.op("Cos", c), axis=-1)


def _dense_pe(g: _Graph, size: int, gaussian: str) -> str:
    """Fourier features of every cell centre of the ``size x size`` grid: ``(1, size^2, E)``."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    x, y = np.meshgrid(centres, centres, indexing="xy")
    return _fourier(g, g.const(np.stack([x, y], -1).reshape(1, size * size, 2), "grid"), gaussian)


def _embed_points(g: _Graph, coords: str, labels: str, gaussian: str, tables: dict, image_size: int) -> str:
    """Sparse tokens ``(1, N, E)``: random Fourier features of the point plus its kind."""
    pe = _fourier(g, g.op("Div", g.op("Add", coords, g.const(0.5)), g.const(float(image_size))), gaussian)
    lab = g.op("Unsqueeze", labels, g.ints([-1]))
    zeros = g.const(np.zeros(len(tables[-1]), np.float32))
    pe = g.op("Where", g.op("Equal", lab, g.const(-1.0)), g.const(tables[-1], "not_a_point"), pe)
    for k in range(4):
        kind = g.op(
            "Where", g.op("Equal", lab, g.const(float(k))), g.const(tables[k], f"point_embed{k}"), zeros
        )
        pe = g.op("Add", pe, kind)
    return pe


def _embed_mask(g: _Graph, mask: str, has_mask: str, p: dict, no_mask: np.ndarray) -> str:
    """Dense prompt ``(1, g, g, E)``: the downscaled mask, or ``no_mask_embed`` (blend)."""
    x = mask
    for conv, norm in (
        ("mask_downscaling_0", "mask_downscaling_1"),
        ("mask_downscaling_3", "mask_downscaling_4"),
    ):
        kernel = _f32(p[conv]["kernel"]).transpose(3, 2, 0, 1)  # (kh, kw, in, out) -> OIHW
        x = g.op(
            "Conv",
            x,
            g.const(kernel, "conv"),
            g.const(_f32(p[conv]["bias"]), "bias"),
            kernel_shape=[2, 2],
            strides=[2, 2],
        )
        x = _nchw(g, _gelu(g, _layer_norm(g, _nhwc(g, x), p[norm], 1e-6)))
    x = _nhwc(g, x)
    last = p["mask_downscaling_6"]
    x = _linear(g, x, {"kernel": _f32(last["kernel"])[0, 0], "bias": last["bias"]})  # 1x1 conv
    keep = g.op("Mul", has_mask, x)
    return g.op(
        "Add", keep, g.op("Mul", g.op("Sub", g.const(1.0), has_mask), g.const(_f32(no_mask), "no_mask"))
    )


def _conv_transpose_2x2(g: _Graph, x: str, p: dict) -> str:
    """Stride-2 kernel-2 transposed conv on NCHW; kernel ``(2, 2, in, out)`` -> ``(in, out, 2, 2)``."""
    kernel = _f32(p["kernel"]).transpose(2, 3, 0, 1)
    return g.op(
        "ConvTranspose",
        x,
        g.const(kernel, "kernel"),
        g.const(_f32(p["bias"]), "bias"),
        kernel_shape=[2, 2],
        strides=[2, 2],
    )


def _stability(g: _Graph, logits: str) -> str:
    """IoU of the masks thresholded at ``t + 1`` and ``t - 1``, per mask: ``(1, K)``."""

    def count(threshold):
        above = g.op("Cast", g.op("Greater", logits, g.const(threshold)), to=TensorProto.FLOAT)
        return g.op("ReduceSum", above, g.ints([-2, -1]), keepdims=0)

    return g.op("Div", count(MASK_THRESHOLD + _STABILITY_OFFSET), count(MASK_THRESHOLD - _STABILITY_OFFSET))


def _resize(g: _Graph, x: str, hw: str) -> str:
    """Bilinear resize of the last two axes to ``hw`` (int64 ``(2,)``), half-pixel centres."""
    lead = g.op("Slice", g.op("Shape", x), g.ints([0]), g.ints([2]))
    return g.op(
        "Resize",
        x,
        "",
        "",
        g.op("Concat", lead, hw, axis=0),
        mode="linear",
        coordinate_transformation_mode="pytorch_half_pixel",
    )


def _postprocess(g: _Graph, masks: str, orig_im_size: str, image_size: int) -> str:
    """Upsample to ``S x S``, crop the padding, resize to ``orig_im_size``."""
    up = _resize(g, masks, g.ints([image_size, image_size]))
    scale = g.op("Div", g.const(float(image_size)), g.op("ReduceMax", orig_im_size, keepdims=0))
    inner = g.op("Floor", g.op("Add", g.op("Mul", orig_im_size, scale), g.const(0.5)))
    inner = g.op("Cast", inner, to=TensorProto.INT64)
    crop = g.op("Slice", up, g.ints([0, 0]), inner, g.ints([2, 3]))
    return _resize(g, crop, g.op("Cast", orig_im_size, to=TensorProto.INT64))


def _numpy_params(model) -> dict:
    import jax

    return jax.tree.map(
        lambda x: np.asarray(x, np.float32), {k: model.params[k] for k in ("prompt_encoder", "mask_decoder")}
    )


def build_onnx_model(
    model,
    *,
    return_single_mask: bool = False,
    use_stability_score: bool = False,
    return_extra_metrics: bool = False,
    opset: int = 17,
) -> onnx.ModelProto:
    """The official ``SamOnnxModel`` graph of ``model`` (a ``SamModel``) as an ONNX proto."""
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (LayerNormalization), got {opset}")
    c = model.config
    s, gs, e, r = c.image_size, c.embedding_size, c.prompt_embed_dim, c.low_res_size
    params = _numpy_params(model)
    pp, dp = params["prompt_encoder"], params["mask_decoder"]
    tp = dp["transformer"]
    heads = c.decoder_heads
    g = _Graph()

    inputs = [
        helper.make_tensor_value_info("image_embeddings", TensorProto.FLOAT, [1, e, gs, gs]),
        helper.make_tensor_value_info("point_coords", TensorProto.FLOAT, [1, "num_points", 2]),
        helper.make_tensor_value_info("point_labels", TensorProto.FLOAT, [1, "num_points"]),
        helper.make_tensor_value_info("mask_input", TensorProto.FLOAT, [1, 1, r, r]),
        helper.make_tensor_value_info("has_mask_input", TensorProto.FLOAT, [1]),
        helper.make_tensor_value_info("orig_im_size", TensorProto.FLOAT, [2]),
    ]

    # Prompt encoder.
    tables = {-1: pp["not_a_point_embed"]["embedding"][0]}
    tables.update({k: pp[f"point_embeddings_{k}"]["embedding"][0] for k in range(4)})
    gaussian = g.const(pp["pe_layer"]["positional_encoding_gaussian_matrix"], "gaussian")
    sparse = _embed_points(g, "point_coords", "point_labels", gaussian, tables, s)
    dense = _embed_mask(g, "mask_input", "has_mask_input", pp, pp["no_mask_embed"]["embedding"][0])

    # Mask decoder: the two-way transformer on [iou token, mask tokens, prompt tokens].
    output_tokens = np.concatenate([dp["iou_token"]["embedding"], dp["mask_tokens"]["embedding"]])
    n_masks = output_tokens.shape[0] - 1  # the IoU token comes first
    tokens = g.op("Concat", g.const(output_tokens[None], "output_tokens"), sparse, axis=1)
    image = g.op("Reshape", _nhwc(g, "image_embeddings"), g.ints([0, gs * gs, e]))
    keys = g.op("Add", image, g.op("Reshape", dense, g.ints([0, gs * gs, e])))
    key_pe = _dense_pe(g, gs, gaussian)
    queries, query_pe = tokens, tokens
    for i in range(c.decoder_depth):
        lp = tp[f"layers_{i}"]
        if i == 0:  # the first block's self-attention replaces the tokens, without PE
            queries = _attention(g, queries, queries, queries, lp["self_attn"], heads)
        else:
            q = g.op("Add", queries, query_pe)
            queries = g.op("Add", queries, _attention(g, q, q, queries, lp["self_attn"], heads))
        queries = _layer_norm(g, queries, lp["norm1"], 1e-5)
        q, k = g.op("Add", queries, query_pe), g.op("Add", keys, key_pe)
        queries = g.op("Add", queries, _attention(g, q, k, keys, lp["cross_attn_token_to_image"], heads))
        queries = _layer_norm(g, queries, lp["norm2"], 1e-5)
        hidden = g.op("Relu", _linear(g, queries, lp["mlp"]["lin1"]))
        queries = g.op("Add", queries, _linear(g, hidden, lp["mlp"]["lin2"]))
        queries = _layer_norm(g, queries, lp["norm3"], 1e-5)
        q, k = g.op("Add", queries, query_pe), g.op("Add", keys, key_pe)
        keys = g.op("Add", keys, _attention(g, k, q, queries, lp["cross_attn_image_to_token"], heads))
        keys = _layer_norm(g, keys, lp["norm4"], 1e-5)
    q, k = g.op("Add", queries, query_pe), g.op("Add", keys, key_pe)
    queries = g.op("Add", queries, _attention(g, q, k, keys, tp["final_attn_token_to_image"], heads))
    hs = _layer_norm(g, queries, tp["norm_final_attn"], 1e-5)

    # Upscale the image tokens 4x and dot them with the hypernetwork outputs.
    up = _nchw(g, g.op("Reshape", keys, g.ints([0, gs, gs, e])))
    up = _conv_transpose_2x2(g, up, dp["output_upscaling_0"])
    up = _nchw(g, _gelu(g, _layer_norm(g, _nhwc(g, up), dp["output_upscaling_1"], 1e-6)))
    up = _gelu(g, _conv_transpose_2x2(g, up, dp["output_upscaling_3"]))
    up = g.op("Reshape", up, g.ints([0, e // 8, r * r]))
    hyper = [
        g.op(
            "Unsqueeze",
            _mlp(g, g.op("Gather", hs, g.ints(1 + i), axis=1), dp[f"output_hypernetworks_mlps_{i}"], 3),
            g.ints([1]),
        )
        for i in range(n_masks)
    ]
    low_res = g.op("Reshape", g.op("MatMul", g.op("Concat", *hyper, axis=1), up), g.ints([0, n_masks, r, r]))
    scores = _mlp(g, g.op("Gather", hs, g.ints(0), axis=1), dp["iou_prediction_head"], 3)

    if use_stability_score:
        scores = _stability(g, low_res)
    if return_single_mask:
        num_points = g.op(
            "Cast", g.op("Gather", g.op("Shape", "point_coords"), g.ints(1)), to=TensorProto.FLOAT
        )
        reweight = np.zeros((1, n_masks), np.float32)
        reweight[0, 0] = _SINGLE_MASK_REWEIGHT
        bias = g.op("Mul", g.op("Sub", num_points, g.const(2.5)), g.const(reweight, "reweight"))
        best = g.op("ArgMax", g.op("Add", scores, bias), axis=1, keepdims=0)  # (1,)
        low_res = g.op("Gather", low_res, best, axis=1)
        scores = g.op("Gather", scores, best, axis=1)
    masks = _postprocess(g, low_res, "orig_im_size", s)

    k_out = 1 if return_single_mask else n_masks
    g.nodes.append(helper.make_node("Identity", [masks], ["masks"]))
    g.nodes.append(helper.make_node("Identity", [scores], ["iou_predictions"]))
    g.nodes.append(helper.make_node("Identity", [low_res], ["low_res_masks"]))
    outputs = [
        helper.make_tensor_value_info("masks", TensorProto.FLOAT, [1, k_out, "H", "W"]),
        helper.make_tensor_value_info("iou_predictions", TensorProto.FLOAT, [1, k_out]),
    ]
    if return_extra_metrics:
        g.nodes.append(helper.make_node("Identity", [_stability(g, masks)], ["stability_scores"]))
        area = g.op(
            "ReduceSum",
            g.op("Cast", g.op("Greater", masks, g.const(MASK_THRESHOLD)), to=TensorProto.INT64),
            g.ints([-2, -1]),
            keepdims=0,
        )
        g.nodes.append(helper.make_node("Identity", [area], ["areas"]))
        outputs += [
            helper.make_tensor_value_info("stability_scores", TensorProto.FLOAT, [1, k_out]),
            helper.make_tensor_value_info("areas", TensorProto.INT64, [1, k_out]),
        ]
    outputs.append(helper.make_tensor_value_info("low_res_masks", TensorProto.FLOAT, [1, k_out, r, r]))

    graph = helper.make_graph(g.nodes, "sam_decoder", inputs, outputs, g.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="sam-jax")
    meta = {
        "variant": getattr(model, "variant", "custom"),
        "image_size": s,
        "embedding_size": gs,
        "low_res_size": r,
        "return_single_mask": return_single_mask,
        "use_stability_score": use_stability_score,
        "return_extra_metrics": return_extra_metrics,
    }
    helper.set_model_props(proto, {k: str(v) for k, v in meta.items()})
    if opset == 17:
        proto.ir_version = 8  # the IR of opset 17 (ONNX 1.12), for older runtimes
    onnx.checker.check_model(proto)
    return proto


def build_encoder_onnx(model) -> onnx.ModelProto:
    """Optional: the image encoder as ONNX through the jax2onnx converter.

    ``pixels (b, 3, S, S)`` preprocessed as for the StableHLO encoder, NCHW ->
    ``image_embeddings (b, E, S/16, S/16)``, ready for the decoder's input; ``b``
    dynamic. jax2onnx is not a declared dependency: it pins
    ``orbax-checkpoint<0.11.37``, so install it beside ours with
    ``pip install --no-deps jax2onnx onnx-ir``.
    """
    try:
        from jax2onnx import to_onnx
    except ImportError as e:
        raise ImportError(
            "the ONNX image encoder needs jax2onnx (pip install --no-deps jax2onnx onnx-ir)"
        ) from e
    import jax

    from sam_jax.modeling.sam import Sam

    params = jax.tree.map(lambda x: jax.numpy.asarray(x, jax.numpy.float32), model.params["image_encoder"])
    if sum(x.size * 4 for x in jax.tree.leaves(params)) > 1900 * 2**20:
        raise ValueError("the image encoder's weights exceed the 2 GiB of one ONNX protobuf")
    module = model.module.clone(attention_impl="xla")  # platform-neutral, any batch

    def encode(pixels):
        return module.apply({"params": {"image_encoder": params}}, pixels, method=Sam.embed_images)

    s = model.config.image_size
    return to_onnx(
        encode,
        [("b", s, s, 3)],
        inputs_as_nchw=[0],
        outputs_as_nchw=[0],
        input_names=["pixels"],
        output_names=["image_embeddings"],
        model_name="sam_image_encoder",
    )


__all__ = ["build_encoder_onnx", "build_onnx_model"]
