"""Time per image of each zero-shot protocol for vit_b on this machine (random weights).

Run once: ``python benchmarks/eval_protocols_cpu.py [--variant vit_b]``. Each protocol
is warmed up on the same image size first (so compilation is not counted) and then
timed on one image: a COCO-sized photo (427x640, 7 drawn masks / boxes) for points,
proposals and instances, a BSDS-sized one (321x481) for edges. Prints JSON with wall
seconds and process CPU seconds (``cpu_s``; on a shared machine the wall time is
inflated by other processes, the CPU time much less).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from PIL import Image, ImageDraw


def _photo(h: int, w: int) -> np.ndarray:
    from skimage import data

    return np.asarray(Image.fromarray(data.coffee()).resize((w, h), Image.BILINEAR))


def _masks(h: int, w: int, n: int = 7) -> np.ndarray:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        im = Image.new("L", (w, h), 0)
        cx, cy = rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h
        rx, ry = rng.uniform(0.05, 0.2) * w, rng.uniform(0.05, 0.2) * h
        ImageDraw.Draw(im).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
        out.append(np.asarray(im, bool))
    return np.stack(out)


CPU_SECONDS: dict[str, float] = {}


def _timed(fn, *args, name: str | None = None):
    """Wall seconds (and, under ``name``, process CPU seconds) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    if name:
        CPU_SECONDS[name] = round(time.process_time() - c0, 2)
    return time.perf_counter() - t0, out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", default="vit_b")
    p.add_argument("--only", default="points,instances,edges,proposals")
    a = p.parse_args(argv)

    import jax

    from sam_jax import SamPredictor, build_sam
    from sam_jax.evaluation.edges import EdgeSettings, edge_generator, edge_map, edge_nms, match_counts
    from sam_jax.evaluation.instances import box_prompts_to_masks
    from sam_jax.evaluation.points import PointSettings, evaluate_image
    from sam_jax.evaluation.proposals import ProposalSettings, proposal_generator, rank_proposals

    model = build_sam(a.variant)
    coco, bsds = _photo(427, 640), _photo(321, 481)
    masks = _masks(427, 640)
    out = {"variant": a.variant, "image": list(coco.shape[:2]), "masks": len(masks)}
    only = a.only.split(",")
    predictor = SamPredictor(model)

    def embed(image):  # set_image dispatches asynchronously: wait for the embedding
        predictor.set_image(image)
        return jax.block_until_ready(predictor.features)

    out["set_image_s_first"] = round(_timed(embed, coco)[0], 2)
    out["set_image_s"] = round(_timed(embed, coco, name="set_image")[0], 2)
    if "points" in only:
        s = PointSettings(clicks=(1, 2, 3, 5, 9), masks_per_batch=16)
        evaluate_image(predictor, coco, masks, s)  # compiles
        out["points_s_per_image"] = round(
            _timed(evaluate_image, predictor, coco[::-1].copy(), masks[:, ::-1].copy(), s, name="points")[0],
            2,
        )
        print(json.dumps(dict(out, cpu_s=CPU_SECONDS)), flush=True)  # partial
    if "instances" in only:
        nz = [np.nonzero(m) for m in masks]
        boxes = np.array([[x.min(), y.min(), x.max() + 1, y.max() + 1] for y, x in nz], float)
        box_prompts_to_masks(predictor, coco, boxes, 16)
        out["instances_s_per_image"] = round(
            _timed(box_prompts_to_masks, predictor, coco, boxes, 16, name="instances")[0], 2
        )
        print(json.dumps(dict(out, cpu_s=CPU_SECONDS)), flush=True)  # partial
    if "edges" in only:
        es = EdgeSettings()
        gen = edge_generator(model, es)
        edge_generator(model, EdgeSettings(points_per_side=8)).generate(bsds)  # compiles
        from scipy import ndimage

        regions = _masks(321, 481, 5).any(axis=0)
        gt = (regions & ~ndimage.binary_erosion(regions, border_value=1))[None]

        def edges_once(img):
            recs = gen.generate(img)
            e = edge_nms(edge_map(recs, img.shape[:2]))
            return len(recs), match_counts(e, gt)

        dt, (n, _) = _timed(edges_once, bsds, name="edges")
        out["edges_s_per_image"] = round(dt, 2)
        out["edges_masks_after_nms"] = n
        print(json.dumps(dict(out, cpu_s=CPU_SECONDS)), flush=True)  # partial
    if "proposals" in only:
        ps = ProposalSettings()
        proposal_generator(model, ProposalSettings(points_per_side=8)).generate(coco)  # compiles
        gen = proposal_generator(model, ps)
        dt, recs = _timed(gen.generate, coco, name="proposals")
        out["proposals_s_per_image"] = round(dt, 2)
        out["proposals_per_image"] = len(rank_proposals(recs, 0, ps.max_proposals))
    print(json.dumps(dict(out, cpu_s=CPU_SECONDS)), flush=True)


if __name__ == "__main__":
    main()
