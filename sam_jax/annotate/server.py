"""The annotation tool's web server: SAM-assisted manual annotation and the
semi-automatic stage of the data engine (Kirillov et al. 2023, section 4).

The browser sends prompts; the server decodes them with a ``SamPredictor`` whose
image embedding was computed once per image (an LRU cache bounded in bytes, so a
click only runs the prompt encoder and mask decoder), feeding the previous
low-res logits back as the mask prompt (section 3, interactive prompting). The
annotator's accepted masks go to :class:`~sam_jax.annotate.store.AnnotationStore`.
With ``prefill`` the automatic mask generator adds confident masks as accepted
``auto`` masks the first time an image is opened (the semi-automatic stage).

JSON API (bodies and answers are JSON objects; errors are ``{"error": message}``
with a 4xx status):

* ``GET  /api/images`` -> ``{"images": [{"name", "masks", "manual", "auto"}], "total", "done"}``
* ``GET  /api/image?name=N`` -> the image file
* ``POST /api/open {"image"}`` -> the image's annotations (prefills when enabled)
* ``POST /api/decode {"image", "points": [[x, y, label]], "box": [x0, y0, x1, y1],
  "mask_input": decode_id, "multimask": bool}`` -> ``{"decode_id", "mask", "score",
  "stability", "ms"}``
* ``POST /api/accept {"image", "mask", "decode_id", "seconds", "points"}`` -> ``{"id", ...}``
* ``POST /api/delete {"image", "id"}``, ``POST /api/undo {"image"}``
* ``POST /api/export`` -> ``{"path", "images", "masks"}`` (one SA-1B tar shard)

Masks from the server (decode) and to it (accept) travel as row-major run lengths
``{"counts": [...]}`` (background first): the column-major SA-1B run lengths of the
transposed mask. Accepted masks come back in their stored form, COCO RLE
(``segmentation``), which the page decodes itself.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from sam_jax.amg import calculate_stability_score, mask_to_rle, rle_to_mask
from sam_jax.annotate.store import AnnotationStore, NothingToUndo, StoreError, export_shard, image_id_of
from sam_jax.image_files import IMAGE_SUFFIXES
from sam_jax.sa1b_json import mask_record, sa1b_record

STATIC_DIR = Path(__file__).parent / "static"
MAX_POINTS = 64
MAX_SECONDS = 24 * 3600.0
DECODES_KEPT = 64


class BadRequest(Exception):
    """A request the server refuses, with its HTTP status and a message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ----------------------------------------------------------------------------- mask transport


def mask_to_runs(mask: np.ndarray) -> list[int]:
    """``(H, W)`` bool -> row-major run lengths, background first."""
    return mask_to_rle(np.asarray(mask, bool).T[None])[0]["counts"]


def runs_to_mask(counts: Any, h: int, w: int) -> np.ndarray:
    """Row-major run lengths -> ``(H, W)`` bool; BadRequest if they do not describe an
    ``H x W`` mask."""
    if not isinstance(counts, list) or not counts:
        raise BadRequest(422, "mask.counts must be a non-empty list of run lengths")
    if len(counts) > h * w + 1 or not all(type(c) is int and c >= 0 for c in counts):
        raise BadRequest(422, "mask.counts must hold non-negative integers (row-major run lengths)")
    if sum(counts) != h * w:
        raise BadRequest(422, f"mask.counts sum to {sum(counts)}, but the image has {h}x{w} = {h * w} pixels")
    return rle_to_mask({"size": [w, h], "counts": counts}).T


# ----------------------------------------------------------------------------- images


class ImageFolder:
    """The images of ``IMAGES_DIR`` (its files with an image suffix; not its sub-folders).

    :meth:`resolve` is the only way from a requested name to a path: it refuses
    absolute paths, separators and ``..``, and anything whose real path (symlinks
    followed) is outside the folder.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"images folder {root} does not exist or is not a folder")
        self.root = root.resolve()
        self._sizes: dict[str, tuple[int, int]] = {}

    def names(self) -> list[str]:
        """Sorted image names; stems must be unique (they name the annotation files)."""
        names = sorted(
            p.name
            for p in self.root.iterdir()
            if p.suffix.lower() in IMAGE_SUFFIXES and self._inside(p) and p.is_file()
        )
        stems: dict[str, str] = {}
        for n in names:
            other = stems.setdefault(Path(n).stem, n)
            if other != n:
                raise ValueError(
                    f"images {other} and {n} in {self.root} share the name {Path(n).stem!r}: "
                    "annotation files are named by stem; rename one"
                )
        return names

    def _inside(self, p: Path) -> bool:
        return p.resolve().is_relative_to(self.root)

    def resolve(self, name: Any) -> Path:
        if not isinstance(name, str) or not name:
            raise BadRequest(400, "image must be a non-empty string (a file name from /api/images)")
        if "\x00" in name:
            raise BadRequest(400, "image name contains a NUL byte")
        if name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
            raise BadRequest(400, f"absolute paths are not served: {name!r}")
        if "/" in name or "\\" in name or name in (".", ".."):
            raise BadRequest(400, f"image must be a file name inside the images folder, got {name!r}")
        path = self.root / name
        if not self._inside(path):
            raise BadRequest(403, f"{name!r} resolves outside the images folder")
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            raise BadRequest(404, f"unknown image {name!r}")
        return path

    def load(self, name: str) -> np.ndarray:
        """``(H, W, 3)`` uint8 RGB."""
        path = self.resolve(name)
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
        except (OSError, ValueError) as e:
            raise BadRequest(422, f"cannot read image {name!r}: {str(e).replace(str(path), name)}") from None

    def size(self, name: str) -> tuple[int, int]:
        """``(H, W)`` (read from the header once)."""
        if name not in self._sizes:
            path = self.resolve(name)
            try:
                with Image.open(path) as im:
                    self._sizes[name] = (im.height, im.width)
            except (OSError, ValueError) as e:
                raise BadRequest(
                    422, f"cannot read image {name!r}: {str(e).replace(str(path), name)}"
                ) from None
        return self._sizes[name]

    def record(self, name: str) -> dict[str, Any]:
        """The SA-1B ``image`` record."""
        h, w = self.size(name)
        return {"image_id": image_id_of(name), "width": w, "height": h, "file_name": name}


# ----------------------------------------------------------------------------- model side


class Engine:
    """The model calls of the tool, one at a time (a lock), through the public inference
    API: one ``SamPredictor`` per cached image embedding, kept in an LRU bounded by the
    embeddings' bytes; ``generator`` (a ``SamAutomaticMaskGenerator`` with ``coco_rle``
    output) for prefilling.

    Args:
      make_predictor: returns a fresh predictor (``set_image``, ``predict``,
        ``get_image_embedding``), e.g. ``lambda: SamPredictor(model)``.
      cache_bytes: memory budget of the cached embeddings (at least one is kept).
      generator: object with ``generate(image) -> records``, or None.
      warmup: after embedding an image of a size not seen before, decode the prompt
        shapes the page sends (1 point; 2, 4 and 8 points with a mask input; a box), so
        that compiling them happens while the image opens rather than on the first clicks.
    """

    def __init__(
        self,
        make_predictor: Callable[[], Any],
        cache_bytes: int = 1 << 30,
        generator: Any | None = None,
        warmup: bool = False,
    ) -> None:
        self.make_predictor = make_predictor
        self.cache_bytes = int(cache_bytes)
        self.generator = generator
        self.warmup = warmup
        self._warm_sizes: set[tuple[int, ...]] = set()
        self.lock = threading.Lock()
        self._cache: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._decodes: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.embeds = 0
        self.decodes = 0

    @property
    def cached_bytes(self) -> int:
        return sum(n for _, n in self._cache.values())

    def cached_images(self) -> list[str]:
        return list(self._cache)

    def _predictor(self, name: str, load: Callable[[str], np.ndarray]) -> Any:
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name][0]
        predictor = self.make_predictor()
        image = load(name)
        try:
            predictor.set_image(image)
        except ValueError as e:  # the predictor's own validation (e.g. an empty image)
            raise BadRequest(422, f"cannot embed {name!r}: {e}") from None
        self.embeds += 1
        if self.warmup and image.shape not in self._warm_sizes:
            _warm(predictor, image.shape[0], image.shape[1])
            self._warm_sizes.add(image.shape)
        nbytes = int(np.asarray(predictor.get_image_embedding()).nbytes)
        self._cache[name] = (predictor, nbytes)
        while len(self._cache) > 1 and self.cached_bytes > self.cache_bytes:
            self._cache.popitem(last=False)
        return predictor

    def embed(self, name: str, load: Callable[[str], np.ndarray]) -> None:
        with self.lock:
            self._predictor(name, load)

    def decode(
        self,
        name: str,
        load: Callable[[str], np.ndarray],
        points: np.ndarray,
        box: np.ndarray | None,
        mask_input: str | None,
        multimask: bool | None,
    ) -> dict[str, Any]:
        """Best mask for the prompts; remembers its low-res logits under a new decode id."""
        prev = None
        if mask_input is not None:
            prev = self.decoded(mask_input)
            if prev is None or prev["image"] != name:
                raise BadRequest(
                    422,
                    f"mask_input {mask_input!r} is not a recent decode of {name!r} "
                    "(expired or the server restarted); send the prompts without it",
                )
        if multimask is None:  # one ambiguous click: let SAM choose among 3; else one mask
            multimask = len(points) == 1 and box is None and prev is None
        with self.lock:
            t0 = time.perf_counter()
            predictor = self._predictor(name, load)
            try:
                mask, score, stability, low_res = _best_mask(
                    predictor, points, box, None if prev is None else prev["low_res"], multimask
                )
            except ValueError as e:  # the predictor's own validation
                raise BadRequest(422, f"bad prompt: {e}") from None
            ms = (time.perf_counter() - t0) * 1e3
            self.decodes += 1
            decode_id = secrets.token_hex(8)
            fg = [[float(x), float(y)] for x, y, lab in points if lab == 1]
            if not fg and box is not None:
                fg = [[float((box[0] + box[2]) / 2), float((box[1] + box[3]) / 2)]]
            self._decodes[decode_id] = {
                "image": name,
                "low_res": low_res,
                "score": score,
                "stability": stability,
                "points": fg,
            }
            while len(self._decodes) > DECODES_KEPT:
                self._decodes.popitem(last=False)
        return {
            "decode_id": decode_id,
            "mask": {"counts": mask_to_runs(mask)},
            "area": int(mask.sum()),
            "score": score,
            "stability": stability,
            "ms": round(ms, 2),
        }

    def decoded(self, decode_id: str) -> dict[str, Any] | None:
        with self.lock:
            return self._decodes.get(decode_id)

    def auto_masks(self, image: np.ndarray, name: str) -> list[dict[str, Any]]:
        """The generator's masks as SA-1B annotations (without ``id``)."""
        with self.lock:
            records = self.generator.generate(image)
        anns = sa1b_record(records, name, 0, image.shape)["annotations"]
        return [{k: v for k, v in a.items() if k != "id"} for a in anns]


def _best_mask(
    predictor: Any, points: np.ndarray, box: np.ndarray | None, mask_input: np.ndarray | None, multimask: bool
) -> tuple[np.ndarray, float, float, np.ndarray]:
    """One ``predict`` call -> the best mask ``(H, W)`` bool, its predicted IoU, its stability
    score (of the low-res logits: the full-resolution ones would cost more than the decode)
    and its low-res logits ``(1, 256, 256)``."""
    coords = labels = None
    if len(points):
        coords, labels = points[:, :2], points[:, 2].astype(np.int32)
    masks, iou, low_res = predictor.predict(
        point_coords=coords, point_labels=labels, box=box, mask_input=mask_input, multimask_output=multimask
    )
    best = int(np.argmax(iou))
    low = np.asarray(low_res[best : best + 1])
    stability = float(np.nan_to_num(np.asarray(calculate_stability_score(low, 0.0, 1.0))[0]))
    return np.asarray(masks[best], bool), float(iou[best]), stability, low


def _warm(predictor: Any, h: int, w: int) -> None:
    """Decode the prompt shapes of a typical object once (see ``Engine``'s ``warmup``)."""
    centre = np.array([[w / 2, h / 2, 1.0]])
    _, _, _, low = _best_mask(predictor, centre, None, None, True)
    for n in (2, 4, 8):
        _best_mask(predictor, np.repeat(centre, n, 0), None, np.zeros_like(low), False)
    _best_mask(predictor, np.zeros((0, 3)), np.array([0.0, 0.0, w / 2, h / 2]), None, False)


# ----------------------------------------------------------------------------- request parsing


def _reject_constant(c: str) -> Any:
    raise BadRequest(422, f"{c} is not a number; coordinates and times must be finite")


async def _json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if not body:
        raise BadRequest(400, "empty body: expected a JSON object")
    try:
        obj = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise BadRequest(400, f"malformed JSON body: {e}") from None
    if not isinstance(obj, dict):
        raise BadRequest(400, f"body must be a JSON object, got {type(obj).__name__}")
    return obj


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise BadRequest(422, f"{what} must be a number, got {json.dumps(v)[:40]}")
    if not math.isfinite(v):
        raise BadRequest(422, f"{what} must be finite, got {v}")
    return float(v)


def _points(raw: Any, h: int, w: int) -> np.ndarray:
    """``[[x, y, label], ...]`` -> ``(N, 3)`` float64, inside the image, labels 0/1."""
    if raw is None:
        return np.zeros((0, 3))
    if not isinstance(raw, list):
        raise BadRequest(422, "points must be a list of [x, y, label]")
    if len(raw) > MAX_POINTS:
        raise BadRequest(422, f"at most {MAX_POINTS} points per prompt, got {len(raw)}")
    out = []
    for i, p in enumerate(raw):
        if not isinstance(p, list) or len(p) != 3:
            raise BadRequest(422, f"points[{i}] must be [x, y, label], got {json.dumps(p)[:60]}")
        x, y = _number(p[0], f"points[{i}] x"), _number(p[1], f"points[{i}] y")
        if p[2] not in (0, 1) or isinstance(p[2], bool):
            raise BadRequest(
                422, f"points[{i}] label must be 1 (foreground) or 0 (background), got {json.dumps(p[2])}"
            )
        if not (0 <= x <= w and 0 <= y <= h):
            raise BadRequest(422, f"points[{i}] ({x:g}, {y:g}) is outside the {w}x{h} image")
        out.append((x, y, float(p[2])))
    return np.asarray(out, np.float64)


def _box(raw: Any, h: int, w: int) -> np.ndarray | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) != 4:
        raise BadRequest(422, "box must be [x0, y0, x1, y1]")
    b = [_number(v, f"box[{i}]") for i, v in enumerate(raw)]
    if b[2] < b[0] or b[3] < b[1]:
        raise BadRequest(422, f"box must have x1 >= x0 and y1 >= y0, got {b}")
    if min(b) < 0 or b[0] > w or b[2] > w or b[1] > h or b[3] > h:
        raise BadRequest(422, f"box {b} is outside the {w}x{h} image")
    return np.asarray(b, np.float64)


# ----------------------------------------------------------------------------- the app


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413 (declared
    length or streamed bytes) before any endpoint reads them."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or {}).get(b"content-length")
        too_big = declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes)
        chunks, size, more = [], 0, not too_big
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message], receive), send)
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                too_big = True
                break
            chunks.append(message)
            more = message.get("more_body", False)
        if too_big:
            response = JSONResponse(
                {"error": f"request body over the limit of {self.max_bytes} bytes"}, status_code=413
            )
            return await response(scope, receive, send)
        return await self.app(scope, _replay(chunks, receive), send)


def _replay(messages: list[dict], receive):
    """The buffered messages first, then the client's own (a later disconnect)."""
    queue = list(messages)

    async def replay():
        if queue:
            return queue.pop(0)
        return await receive()

    return replay


def create_app(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    make_predictor: Callable[[], Any],
    generator: Any | None = None,
    cache_bytes: int = 1 << 30,
    max_body_bytes: int = 16 << 20,
    warmup: bool = False,
) -> Starlette:
    """The annotation tool as a Starlette app.

    Args:
      images_dir: folder of images to annotate (only these files are served).
      out_dir: folder of the SA-1B JSON files (created).
      make_predictor: returns a new predictor with the ``SamPredictor`` API.
      generator: with ``generate(image)`` (``coco_rle`` records), prefills each image once.
      cache_bytes: memory budget of cached image embeddings.
      max_body_bytes: largest request body accepted.
      warmup: compile the usual prompt shapes when an image of a new size opens (``Engine``).
    """
    folder = ImageFolder(images_dir)
    folder.names()  # fail early on duplicate stems
    store = AnnotationStore(out_dir)
    engine = Engine(make_predictor, cache_bytes, generator, warmup)

    def stem(name: str) -> str:
        return Path(name).stem

    def names() -> list[str]:
        try:
            return folder.names()
        except ValueError as e:  # two images with one stem appeared since the start
            raise BadRequest(409, str(e)) from None

    def view(name: str) -> dict[str, Any]:
        h, w = folder.size(name)
        doc = store.read(stem(name)) or {"annotations": [], "annotate": {}}
        state = doc.get("annotate", {})
        return {
            "image": {"name": name, "width": w, "height": h},
            "annotations": [
                {
                    "id": a["id"],
                    "source": a.get("source", "auto"),
                    "seconds": a.get("seconds", 0.0),
                    "area": a.get("area"),
                    "bbox": a.get("bbox"),
                    "predicted_iou": a.get("predicted_iou"),
                    "segmentation": a["segmentation"],
                }
                for a in doc["annotations"]
            ],
            "prefilled": bool(state.get("prefilled", False)),
            "can_undo": bool(state.get("history")),
        }

    async def index(request: Request):
        return FileResponse(STATIC_DIR / "index.html")

    async def list_images(request: Request):
        def work():
            images, done = [], 0
            for name in names():
                try:
                    doc, error = store.read(stem(name)), None
                except StoreError as e:  # listed with its problem; opening it answers 409
                    doc, error = None, str(e)
                anns = doc["annotations"] if doc else []
                manual = sum(a.get("source") == "manual" for a in anns)
                images.append(
                    {
                        "name": name,
                        "masks": len(anns),
                        "manual": manual,
                        "auto": len(anns) - manual,
                        **({"error": error} if error else {}),
                    }
                )
                done += bool(anns)
            return {
                "images": images,
                "total": len(images),
                "done": done,
                "prefill": engine.generator is not None,
            }

        return JSONResponse(await run_in_threadpool(work))

    async def image_file(request: Request):
        name = request.query_params.get("name")
        if name is None:
            raise BadRequest(400, "missing query parameter 'name'")
        return FileResponse(folder.resolve(name))

    async def open_image(request: Request):
        body = await _json_body(request)
        name = body.get("image")
        folder.resolve(name)

        def work():
            engine.embed(name, folder.load)
            if engine.generator is not None:
                doc = store.read(stem(name))
                if not (doc and doc.get("annotate", {}).get("prefilled")):
                    anns = engine.auto_masks(folder.load(name), name)
                    store.prefill(stem(name), folder.record(name), anns)
            return view(name)

        return JSONResponse(await run_in_threadpool(work))

    async def get_annotations(request: Request):
        name = request.query_params.get("image")
        folder.resolve(name)
        return JSONResponse(await run_in_threadpool(view, name))

    async def decode(request: Request):
        body = await _json_body(request)
        name = body.get("image")
        folder.resolve(name)
        h, w = folder.size(name)
        points = _points(body.get("points"), h, w)
        box = _box(body.get("box"), h, w)
        if not len(points) and box is None:
            raise BadRequest(422, "give at least one point or a box")
        mask_input = body.get("mask_input")
        if mask_input is not None and not isinstance(mask_input, str):
            raise BadRequest(422, "mask_input must be a decode_id string from an earlier decode")
        multimask = body.get("multimask")
        if multimask is not None and not isinstance(multimask, bool):
            raise BadRequest(422, "multimask must be true or false")
        return JSONResponse(
            await run_in_threadpool(engine.decode, name, folder.load, points, box, mask_input, multimask)
        )

    async def accept(request: Request):
        body = await _json_body(request)
        name = body.get("image")
        folder.resolve(name)
        h, w = folder.size(name)
        raw = body.get("mask")
        if not isinstance(raw, dict):
            raise BadRequest(422, 'mask must be an object {"counts": [row-major run lengths]}')
        seconds = _number(body.get("seconds", 0.0), "seconds")
        if not 0 <= seconds <= MAX_SECONDS:
            raise BadRequest(422, f"seconds must be in [0, {MAX_SECONDS:g}], got {seconds:g}")
        points = _points(body.get("points"), h, w)
        decode_id = body.get("decode_id")
        if decode_id is not None and not isinstance(decode_id, str):
            raise BadRequest(422, "decode_id must be a string")

        def work():
            mask = runs_to_mask(raw.get("counts"), h, w)
            if not mask.any():
                raise BadRequest(422, "mask is empty")
            info = engine.decoded(decode_id) if decode_id else None
            if info is not None and info["image"] == name:
                score, stability, pts = info["score"], info["stability"], info["points"]
            else:  # drawn by hand: a person's mask, no model scores
                score, stability = 1.0, 1.0
                pts = [[float(x), float(y)] for x, y, lab in points if lab == 1]
            if not pts:
                from scipy import ndimage

                y, x = np.unravel_index(np.argmax(ndimage.distance_transform_edt(mask)), mask.shape)
                pts = [[float(x), float(y)]]
            record = mask_record(mask, point_coords=pts, predicted_iou=score, stability_score=stability)
            ann_id = store.accept(stem(name), folder.record(name), record, "manual", seconds)
            return {"id": ann_id, **view(name)}

        return JSONResponse(await run_in_threadpool(work))

    async def delete(request: Request):
        body = await _json_body(request)
        name = body.get("image")
        folder.resolve(name)
        ann_id = body.get("id")
        if isinstance(ann_id, bool) or not isinstance(ann_id, int):
            raise BadRequest(422, "id must be an integer annotation id")

        def work():
            if not store.delete(stem(name), folder.record(name), ann_id):
                raise BadRequest(404, f"{name!r} has no annotation with id {ann_id}")
            return view(name)

        return JSONResponse(await run_in_threadpool(work))

    async def undo(request: Request):
        body = await _json_body(request)
        name = body.get("image")
        folder.resolve(name)

        def work():
            try:
                undone = store.undo(stem(name), folder.record(name))
            except NothingToUndo:
                raise BadRequest(409, f"nothing to undo on {name!r}") from None
            return {**undone, **view(name)}

        return JSONResponse(await run_in_threadpool(work))

    async def export(request: Request):
        def work():
            return export_shard(
                store,
                [(stem(n), folder.resolve(n)) for n in names()],
                store.out_dir / "export" / "annotations.tar",
            )

        return JSONResponse(await run_in_threadpool(work))

    async def bad_request(request: Request, exc: BadRequest):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    async def store_error(request: Request, exc: StoreError):
        return JSONResponse({"error": str(exc)}, status_code=409)

    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    routes = [
        Route("/", index),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        Route("/api/images", list_images, methods=["GET"]),
        Route("/api/image", image_file, methods=["GET"]),
        Route("/api/annotations", get_annotations, methods=["GET"]),
        Route("/api/open", open_image, methods=["POST"]),
        Route("/api/decode", decode, methods=["POST"]),
        Route("/api/accept", accept, methods=["POST"]),
        Route("/api/delete", delete, methods=["POST"]),
        Route("/api/undo", undo, methods=["POST"]),
        Route("/api/export", export, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={BadRequest: bad_request, StoreError: store_error, HTTPException: http_error},
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.state.engine = engine
    app.state.store = store
    app.state.folder = folder
    return app


# ----------------------------------------------------------------------------- running


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(128)
    return sock


def make_server(app: Starlette, sock: socket.socket, log_level: str = "warning"):
    """A ``uvicorn.Server`` for ``app``; run it with ``server.run(sockets=[sock])`` and stop
    it with ``server.should_exit = True``."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    return uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2)
    )


__all__ = [
    "STATIC_DIR",
    "BadRequest",
    "BodyLimit",
    "Engine",
    "ImageFolder",
    "bind",
    "create_app",
    "make_server",
    "mask_to_runs",
    "runs_to_mask",
]
