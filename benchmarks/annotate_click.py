"""Server-side latency of one click in the annotation tool (vit_b, CPU, random weights).

Runs the real app (``sam_jax.annotate.server.create_app`` with ``SamPredictor``)
through Starlette's test client on a synthetic image: opens the image (the one
embedding), then clicks. Each click is ``POST /api/decode`` with all points so
far and the previous decode's low-res logits as the mask input, as the page
sends them. Prints one JSON line per figure: ``server_ms`` is the time the
server spends in the model call (``predict`` + stability score, reported by the
API), ``request_ms`` the whole request in-process (validation, decode, mask
encoding, JSON), ``cpu_ms`` the process's CPU time during the request (all
threads; on a shared machine the least inflated figure). The medians are over
the clicks after the first object (the page's prompt shapes are compiled while
the image opens, unless ``--no-warmup``). On a busy machine, ``--calibrate`` (on
by default for vit_b) first times bare ``predict`` on a 512x512 image against its
idle figure and divides the click times by that slowdown
(``idle_estimate_server_ms``).

    python -m benchmarks.annotate_click [--variant vit_b] [--size 1500x2250,768x1024] [--clicks 12]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from starlette.testclient import TestClient

from benchmarks.annotate_stub import synthetic_scene
from sam_jax import SamPredictor, build_sam
from sam_jax.annotate.server import create_app


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--variant", default="vit_b")
    ap.add_argument(
        "--size",
        default="1500x2250,768x1024",
        help="image sizes HxW, comma-separated (SA-1B images are about 1500x2250)",
    )
    ap.add_argument("--clicks", type=int, default=12)
    ap.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="do not compile the usual prompt shapes while the image opens",
    )
    ap.add_argument(
        "--no-calibrate",
        dest="calibrate",
        action="store_false",
        help="skip timing bare predict on a 512x512 image (the README's idle figure)",
    )
    args = ap.parse_args()
    model = build_sam(args.variant)
    slowdown = _calibrate(model) if args.calibrate and args.variant == "vit_b" else None
    for size in args.size.split(","):
        h, w = (int(v) for v in size.split("x"))
        _measure(args, model, h, w, slowdown)


# `predict`, one point, after `set_image` on a 512x512 photo: 0.056 s on this 2-core CPU when
# idle (README, benchmarks/results/cpu-inference-2026-11-30.jsonl).
IDLE_PREDICT_512_MS = 56.0


def _calibrate(model) -> float:
    """How much slower than idle this machine is now: bare ``predict`` on 512x512 against
    the idle figure. Click times divided by it estimate the idle click time."""
    predictor = SamPredictor(model)
    predictor.set_image(synthetic_scene(512, 512)[0])
    point, label = np.array([[230.0, 205.0]]), np.array([1])
    predictor.predict(point, label)
    times = []
    for _ in range(10):
        t = time.perf_counter()
        predictor.predict(point, label)
        times.append((time.perf_counter() - t) * 1e3)
    ms = statistics.median(times)
    print(
        json.dumps(
            {
                "what": "calibration: predict one point, 512x512",
                "median_ms": round(ms, 1),
                "idle_ms": IDLE_PREDICT_512_MS,
                "slowdown": round(ms / IDLE_PREDICT_512_MS, 2),
                "load_average": [round(v, 1) for v in os.getloadavg()],
            }
        ),
        flush=True,
    )
    return ms / IDLE_PREDICT_512_MS


def _measure(args: argparse.Namespace, model, h: int, w: int, slowdown: float | None) -> None:
    image, _ = synthetic_scene(h, w)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "images").mkdir()
        Image.fromarray(image).save(tmp / "images" / "scene.png")
        app = create_app(
            tmp / "images", tmp / "out", make_predictor=lambda: SamPredictor(model), warmup=args.warmup
        )
        c = TestClient(app)
        t = time.perf_counter()
        assert c.post("/api/open", json={"image": "scene.png"}).status_code == 200
        print(
            json.dumps(
                {
                    "what": "open (embedding + warm-up)" if args.warmup else "open (embedding)",
                    "variant": args.variant,
                    "size": [h, w],
                    "seconds": round(time.perf_counter() - t, 3),
                }
            ),
            flush=True,
        )
        rng = np.random.default_rng(0)
        points, prev, rows = [], None, []
        for i in range(args.clicks):
            if i % 4 == 0:  # a new object every 4 clicks: first click has no mask input
                points, prev = [], None
            label = 1 if i % 4 != 3 else 0
            points.append([float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1)), label])
            t, cpu = time.perf_counter(), time.process_time()
            r = c.post("/api/decode", json={"image": "scene.png", "points": points, "mask_input": prev})
            request_ms = (time.perf_counter() - t) * 1e3
            cpu_ms = (time.process_time() - cpu) * 1e3
            assert r.status_code == 200, r.text
            r = r.json()
            prev = r["decode_id"]
            rows.append(
                {
                    "click": i,
                    "points": len(points),
                    "mask_input": i % 4 != 0,
                    "server_ms": r["ms"],
                    "request_ms": round(request_ms, 2),
                    "cpu_ms": round(cpu_ms, 2),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
        assert app.state.engine.embeds == 1
        warm = rows[4:] if len(rows) > 4 else rows[1:]
        print(
            json.dumps(
                {
                    "what": "click",
                    "variant": args.variant,
                    "size": [h, w],
                    "warm_clicks": len(warm),
                    "median_server_ms": round(statistics.median(r["server_ms"] for r in warm), 1),
                    "median_request_ms": round(statistics.median(r["request_ms"] for r in warm), 1),
                    "median_cpu_ms": round(statistics.median(r["cpu_ms"] for r in warm), 1),
                    "first_click_ms": rows[0]["request_ms"],
                    "embeddings": app.state.engine.embeds,
                    "idle_estimate_server_ms": None
                    if slowdown is None
                    else round(statistics.median(r["server_ms"] for r in warm) / slowdown, 1),
                    "load_average": [round(v, 1) for v in os.getloadavg()],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
