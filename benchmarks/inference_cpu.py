"""CPU timings of sam-jax against the official package (vit_b, 1024, random weights).

Writes random official weights to a ``.pth`` once, loads them into both
implementations and prints one JSON line per measurement: ``set_image``,
``predict`` with one point (after ``set_image``; first call and the median of 20
warm calls, ours and theirs alternating), and ``generate`` with default settings
(first call and a second run).

    python benchmarks/inference_cpu.py [--image astronaut|chelsea] [--skip-official]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parents[1] / "tests")]


def _time(fn, repeat=1):
    out, times = None, []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, times


def _emit(impl, what, seconds, **extra):
    print(json.dumps({"impl": impl, "what": what, "seconds": round(seconds, 4), **extra}),
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--image", default="astronaut")
    ap.add_argument("--skip-official", action="store_true")
    args = ap.parse_args()

    import skimage.data
    import torch
    import segment_anything
    from reference_sam import official_sam

    from sam_jax import SamAutomaticMaskGenerator, SamPredictor, build_sam
    from sam_jax.modeling.variants import VARIANTS

    image = getattr(skimage.data, args.image)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, -1)
    h, w = image.shape[:2]
    point, label = np.array([[w * 0.45, h * 0.4]]), np.array([1])
    official = official_sam(VARIANTS["vit_b"], seed=0)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "vit_b_random.pth"
        torch.save(official.state_dict(), path)
        ours = build_sam("vit_b", checkpoint=path)
    torch.set_num_threads(torch.get_num_threads())

    pred = SamPredictor(ours)
    # set_image dispatches asynchronously: wait for the embedding to exist.
    _, t = _time(lambda: (pred.set_image(image), pred.features.block_until_ready()), 2)
    _emit("sam_jax", "set_image", t[1], first_call=round(t[0], 3))
    ref = None
    if not args.skip_official:
        ref = segment_anything.SamPredictor(official)
        with torch.no_grad():
            _, t = _time(lambda: ref.set_image(image), 2)
        _emit("official", "set_image", t[1], first_call=round(t[0], 3))

    # predict: the two implementations alternate call by call (same machine state)
    times = {"sam_jax": [], "official": []}
    with torch.no_grad():
        for _ in range(21):
            times["sam_jax"] += _time(lambda: pred.predict(point, label))[1]
            if ref is not None:
                times["official"] += _time(lambda: ref.predict(point, label))[1]
    for impl, t in times.items():
        if t:
            _emit(impl, "predict_1_point", float(np.median(t[1:])), first_call=round(t[0], 3),
                  calls=len(t) - 1)

    gen = SamAutomaticMaskGenerator(ours)
    out, t = _time(lambda: gen.generate(image), 2)
    _emit("sam_jax", "generate_default", t[1], first_call=round(t[0], 3), masks=len(out))
    if ref is not None:
        with torch.no_grad():
            gen = segment_anything.SamAutomaticMaskGenerator(official)
            out, t = _time(lambda: gen.generate(image), 1)
        _emit("official", "generate_default", t[0], masks=len(out))


if __name__ == "__main__":
    main()
