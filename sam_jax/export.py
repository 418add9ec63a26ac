"""Export for serving: SAM's two halves as serialised StableHLO modules.

SAM is split so that the heavy image encoder runs once per image and the
light prompt encoder + mask decoder runs per prompt, in about 50 ms, even in a
browser (Kirillov et al. 2023, section 3 "Efficiency" and Fig. 4). The export
follows that split and writes one artifact per half with ``jax.export``:

``image_encoder``
    ``pixels (b, S, S, 3)`` float32, normalised and zero-padded
    (``sam_jax.modeling.sam.preprocess``) -> ``image_embeddings (b, S/16, S/16, E)``;
    the batch ``b`` is symbolic.
``mask_decoder``
    ``image_embeddings (1, S/16, S/16, E)``, ``point_coords (b, n, 2)`` XY in the
    ``S x S`` input frame, ``point_labels (b, n)`` int32 (1 foreground, 0
    background, -1 the official padding point, -2 an empty slot), ``boxes (b, 4)``
    XYXY with ``box_valid (b,)`` bool, ``mask_input (b, S/4, S/4)`` logits with
    ``has_mask_input (b,)`` bool -> ``low_res_masks (b, 4, S/4, S/4)`` and
    ``iou_predictions (b, 4)``; index 0 is the single-mask output, 1-3 the
    multimask outputs. ``b`` (prompt rows) and ``n`` (points) are symbolic.

Each artifact ``<part>.stablehlo`` is lowered for CPU, CUDA and TPU and comes
with ``<part>.json`` (variant, architecture, input/output shapes and dtypes,
pixel normalisation, image size) and, when the weights are inputs rather than
constants, ``<part>.weights.npz``. :func:`load_exported` runs an artifact with
nothing but jax and numpy: this file imports no model code at module level, so
it can be copied next to the artifacts and used alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PARTS = ("image_encoder", "mask_decoder")
PLATFORMS = ("cpu", "cuda", "tpu")
FORMAT = "sam-jax-stablehlo/1"
# The serialised module is a flatbuffer (2 GiB at most): vit_h's encoder (2.4 GiB) needs
# its weights as inputs.
_MAX_BAKED_BYTES = 1900 * 2**20


def _atomic_write(path: Path, data: bytes) -> None:
    # Imported here: the loader half of this file runs without sam_jax.
    from sam_jax.atomic_io import write_bytes

    write_bytes(path, data)


def _atomic_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _atomic_write(path, buf.getvalue())


# ----------------------------------------------------------------------------- loading


class ExportedModule:
    """A deserialised artifact, callable on numpy or jax arrays.

    ``module(*inputs)`` returns a dict of outputs named as in the metadata; the
    weights (if the artifact takes them as inputs) are placed on the device once.
    Attributes: ``metadata`` (the JSON dict), ``exported`` (the ``jax.export.Exported``),
    ``load_seconds`` (deserialisation and weight loading time).
    """

    def __init__(self, path: str | os.PathLike):
        import jax

        t0 = time.perf_counter()
        path = Path(path)
        if path.suffix != ".stablehlo":
            path = path.with_suffix(".stablehlo")
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(f"{path} and {meta_path} are both needed")
        self.metadata: dict[str, Any] = json.loads(meta_path.read_text())
        if self.metadata.get("format") != FORMAT:
            raise ValueError(f"{meta_path} is not a {FORMAT} artifact")
        self.exported = jax.export.deserialize(bytearray(path.read_bytes()))
        self._weights: list[Any] | None = None
        if self.metadata["weights"] == "inputs":
            with np.load(path.parent / self.metadata["weights_file"]) as z:
                self._weights = [jax.device_put(z[f"w{i:04d}"]) for i in range(len(z.files))]
        self.load_seconds = time.perf_counter() - t0

    @property
    def input_names(self) -> list[str]:
        return [x["name"] for x in self.metadata["inputs"]]

    @property
    def output_names(self) -> list[str]:
        return [x["name"] for x in self.metadata["outputs"]]

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        names = self.input_names
        if len(args) + len(kwargs) != len(names) or set(kwargs) - set(names[len(args) :]):
            raise TypeError(f"{self.metadata['part']} takes the inputs {names}")
        values = list(args) + [kwargs[n] for n in names[len(args) :]]
        values = [
            np.asarray(v, dtype=spec["dtype"]) if not hasattr(v, "devices") else v
            for v, spec in zip(values, self.metadata["inputs"])
        ]
        for v, spec in zip(values, self.metadata["inputs"]):
            want = spec["shape"]
            if len(v.shape) != len(want) or any(isinstance(w, int) and w != d for w, d in zip(want, v.shape)):
                raise ValueError(f"{spec['name']} must have shape {tuple(want)}, got {v.shape}")
        if self._weights is not None:
            values = [self._weights] + values
        return dict(zip(self.output_names, self.exported.call(*values)))


def load_exported(path: str | os.PathLike) -> ExportedModule:
    """Load ``<part>.stablehlo`` (with its ``.json`` and optional weights) for calling."""
    return ExportedModule(path)


# ----------------------------------------------------------------------------- export


def _spec(name: str, shape: Sequence[Any], dtype: str) -> dict[str, Any]:
    return {"name": name, "shape": [d if isinstance(d, int) else str(d) for d in shape], "dtype": dtype}


def _part_signature(config, part: str):
    """``(inputs, outputs)`` metadata of one part; dims are ints or symbol names."""
    s, g, e, r = config.image_size, config.embedding_size, config.prompt_embed_dim, config.low_res_size
    if part == "image_encoder":
        return (
            [_spec("pixels", ("b", s, s, 3), "float32")],
            [_spec("image_embeddings", ("b", g, g, e), "float32")],
        )
    return (
        [
            _spec("image_embeddings", (1, g, g, e), "float32"),
            _spec("point_coords", ("b", "n", 2), "float32"),
            _spec("point_labels", ("b", "n"), "int32"),
            _spec("boxes", ("b", 4), "float32"),
            _spec("box_valid", ("b",), "bool"),
            _spec("mask_input", ("b", r, r), "float32"),
            _spec("has_mask_input", ("b",), "bool"),
        ],
        [_spec("low_res_masks", ("b", 4, r, r), "float32"), _spec("iou_predictions", ("b", 4), "float32")],
    )


def _part_function(model, part: str) -> tuple[Callable[..., Any], Any]:
    """The function of ``part`` as ``fn(params, *inputs)`` and the params it needs."""
    import jax.numpy as jnp

    from sam_jax.modeling.sam import Sam

    # The XLA attention is platform-neutral and batch-polymorphic (the CPU default
    # loops over chunks whose count depends on the batch).
    module = model.module.clone(attention_impl="xla")
    if part == "image_encoder":

        def encode(params, pixels):
            return (module.apply({"params": params}, pixels, method=Sam.embed_images),)

        return encode, {"image_encoder": model.params["image_encoder"]}

    def decode(params, emb, coords, labels, boxes, box_valid, masks, has_mask):
        args = (emb, coords, labels, boxes, masks)
        single = module.apply({"params": params}, *args, False, box_valid, has_mask, method=Sam.decode)
        multi = module.apply({"params": params}, *args, True, box_valid, has_mask, method=Sam.decode)
        # Both outputs share every op but the last slice (compiled once by CSE).
        return tuple(jnp.concatenate([a, b], axis=1) for a, b in zip(single, multi))

    return decode, {k: model.params[k] for k in ("prompt_encoder", "mask_decoder")}


def export_part(
    model,
    part: str,
    out_dir: str | os.PathLike,
    *,
    weights: str = "constants",
    platforms: Sequence[str] = PLATFORMS,
) -> Path:
    """Serialise one part of ``model`` (a ``SamModel``) to ``out_dir/<part>.stablehlo``.

    Args:
      part: ``"image_encoder"`` or ``"mask_decoder"``.
      weights: ``"constants"`` (baked into the module) or ``"inputs"`` (a separate
        ``<part>.weights.npz``; the module takes them as its first argument).
      platforms: lowering platforms, any of ``cpu``, ``cuda``, ``tpu``.
    Returns the path of the artifact.
    """
    import jax
    from jax import export

    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; known: {list(PARTS)}")
    if weights not in ("constants", "inputs"):
        raise ValueError(f"weights must be 'constants' or 'inputs', got {weights!r}")
    bad = sorted(set(platforms) - set(PLATFORMS))
    if bad or not platforms:
        raise ValueError(f"platforms must be among {list(PLATFORMS)}, got {list(platforms)}")
    config = model.config
    fn, params = _part_function(model, part)
    params = jax.tree.map(lambda x: jax.numpy.asarray(x, jax.numpy.float32), params)
    leaves, treedef = jax.tree.flatten(params)
    nbytes = sum(x.size * 4 for x in leaves)
    if weights == "constants" and nbytes > _MAX_BAKED_BYTES:
        raise ValueError(
            f"the {part} weights take {nbytes / 2**30:.1f} GiB, more than a "
            "serialised module can hold (2 GiB): use weights='inputs' "
            "(--weights inputs)"
        )
    inputs, outputs = _part_signature(config, part)
    scope = export.SymbolicScope()
    symbols = {}

    def dim(d):
        if isinstance(d, int):
            return d
        if d not in symbols:
            symbols[d] = export.symbolic_shape(d, scope=scope)[0]
        return symbols[d]

    specs = [jax.ShapeDtypeStruct(tuple(dim(d) for d in x["shape"]), np.dtype(x["dtype"])) for x in inputs]
    if weights == "constants":

        def call(*xs):
            return fn(params, *xs)
    else:

        def call(flat, *xs):
            return fn(jax.tree.unflatten(treedef, flat), *xs)

        specs = [[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]] + specs
    exported = export.export(jax.jit(call), platforms=tuple(platforms))(*specs)

    out_dir = Path(out_dir)
    path = out_dir / f"{part}.stablehlo"
    meta = {
        "format": FORMAT,
        "part": part,
        "variant": getattr(model, "variant", "custom"),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()},
        "image_size": config.image_size,
        "embedding_size": config.embedding_size,
        "low_res_size": config.low_res_size,
        "inputs": inputs,
        "outputs": outputs,
        "weights": weights,
        "weights_file": f"{part}.weights.npz" if weights == "inputs" else None,
        "num_parameters": int(sum(x.size for x in leaves)),
        "platforms": list(exported.platforms),
        "calling_convention_version": exported.calling_convention_version,
        "jax_version": jax.__version__,
    }
    if part == "image_encoder":
        from sam_jax.geometry import PIXEL_MEAN, PIXEL_STD

        meta["preprocess"] = {
            "pixel_mean": [round(float(v), 4) for v in PIXEL_MEAN],
            "pixel_std": [round(float(v), 4) for v in PIXEL_STD],
            "steps": "resize the longest side to image_size (bilinear), (rgb - mean) / std, "
            "zero-pad bottom/right to image_size x image_size, NHWC float32",
        }
    else:
        meta["prompts"] = {
            "coordinates": "pixels of the image_size x image_size input frame "
            "(original coords * image_size / max(H, W))",
            "point_labels": {
                "1": "foreground",
                "0": "background",
                "-1": "official padding point (add one when there is no box)",
                "-2": "empty slot (ignored)",
            },
            "outputs": "index 0: single-mask output; 1-3: multimask outputs",
            "postprocess": "upsample low_res_masks to image_size (bilinear, half-pixel), crop "
            "to the resized image, resize to the original size; mask = logits > 0",
        }
    if weights == "inputs":
        _atomic_npz(
            out_dir / meta["weights_file"], {f"w{i:04d}": np.asarray(x) for i, x in enumerate(leaves)}
        )
    _atomic_write(path, bytes(exported.serialize()))
    _atomic_write(path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
    return path


def export_stablehlo(
    model,
    out_dir: str | os.PathLike,
    *,
    parts: Sequence[str] = PARTS,
    weights: str = "constants",
    platforms: Sequence[str] = PLATFORMS,
) -> list[Path]:
    """Export each of ``parts`` with :func:`export_part`; returns the artifact paths."""
    return [export_part(model, p, out_dir, weights=weights, platforms=platforms) for p in parts]


def export_onnx(model, path: str | os.PathLike, **options: Any) -> Path:
    """Write the ONNX decoder (:func:`sam_jax.onnx_export.build_onnx_model`) to ``path``."""
    from sam_jax.onnx_export import build_onnx_model

    path = Path(path)
    _atomic_write(path, build_onnx_model(model, **options).SerializeToString())
    return path


def export_encoder_onnx(model, path: str | os.PathLike) -> Path:
    """Write the optional ONNX image encoder (:func:`sam_jax.onnx_export.build_encoder_onnx`)."""
    from sam_jax.onnx_export import build_encoder_onnx

    path = Path(path)
    _atomic_write(path, build_encoder_onnx(model).SerializeToString())
    return path


# ----------------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``sam-jax export`` (model arguments are added by the CLI)."""
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument(
        "--format",
        nargs="+",
        choices=["stablehlo", "onnx", "onnx-encoder"],
        default=["stablehlo"],
        help="artifact formats (default: stablehlo); onnx is the decoder, "
        "onnx-encoder (optional, needs jax2onnx) the image encoder",
    )
    p.add_argument(
        "--parts",
        nargs="+",
        choices=list(PARTS),
        default=list(PARTS),
        help="StableHLO parts to export (default: both)",
    )
    p.add_argument(
        "--weights",
        choices=["constants", "inputs"],
        default="constants",
        help="StableHLO: bake the weights into the module, or pass them as inputs "
        "from <part>.weights.npz (default: constants)",
    )
    p.add_argument(
        "--platforms",
        default=",".join(PLATFORMS),
        help="StableHLO lowering platforms, comma-separated (default: cpu,cuda,tpu)",
    )
    p.add_argument(
        "--return-single-mask",
        action="store_true",
        help="ONNX: return only the best mask (multimask for one point, else single)",
    )
    p.add_argument(
        "--use-stability-score",
        action="store_true",
        help="ONNX: replace the predicted IoU by the stability score of each mask",
    )
    p.add_argument(
        "--return-extra-metrics",
        action="store_true",
        help="ONNX: also output stability_scores and areas of the upscaled masks",
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: 17)")


def run(args: argparse.Namespace, model) -> None:
    """``sam-jax export``: write the requested artifacts for ``model``."""
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
    written: list[Path] = []
    if {"onnx", "onnx-encoder"} & set(args.format):
        try:
            import onnx  # noqa: F401
        except ImportError as e:
            raise SystemExit(
                f"error: ONNX export needs the 'export' extra (pip install 'sam-jax[export]'): {e}"
            ) from None
    if "onnx" in args.format:
        written.append(
            export_onnx(
                model,
                args.out / "sam_decoder.onnx",
                return_single_mask=args.return_single_mask,
                use_stability_score=args.use_stability_score,
                return_extra_metrics=args.return_extra_metrics,
                opset=args.opset,
            )
        )
    if "onnx-encoder" in args.format:
        try:
            written.append(export_encoder_onnx(model, args.out / "sam_encoder.onnx"))
        except ImportError as e:
            raise SystemExit(f"error: {e}") from None
    if "stablehlo" in args.format:
        written += export_stablehlo(
            model, args.out, parts=args.parts, weights=args.weights, platforms=platforms
        )
    for path in written:
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")


__all__ = [
    "PARTS",
    "PLATFORMS",
    "ExportedModule",
    "export_encoder_onnx",
    "export_onnx",
    "export_part",
    "export_stablehlo",
    "load_exported",
]
