"""One result format for every zero-shot protocol: JSON, a markdown table and a plot.

``results.json`` (schema ``sam-jax-eval/1``)::

    {"schema": "sam-jax-eval/1", "protocol": "points" | "edges" | "proposals" | "instances",
     "dataset": {"name", "kind", "path", "num_images", "num_masks", "masks_before_subsampling"},
     "model": {"checkpoint", "variant", "image_size", "step"},
     "settings": {...the protocol's settings...},
     "metrics": {...the protocol's metrics, see its module...},
     "timing": {"seconds", "images", "images_per_s"},
     "created": "<UTC ISO time>"}

Writes are atomic (temporary file + ``os.replace``). Per-image records go to
``per_image.jsonl`` as they are computed, so an interrupted run resumes.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Iterable
from typing import Any

from sam_jax.atomic_io import write_bytes

SCHEMA = "sam-jax-eval/1"


def result_document(
    protocol: str, dataset: dict, model: dict, settings: dict, metrics: dict, timing: dict
) -> dict:
    return {
        "schema": SCHEMA,
        "protocol": protocol,
        "dataset": dataset,
        "model": model,
        "settings": settings,
        "metrics": metrics,
        "timing": timing,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def markdown_table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(doc: dict, table: str) -> str:
    d, m, t = doc["dataset"], doc["model"], doc["timing"]
    return (
        f"# sam-jax eval: {doc['protocol']} on {d['name']}\n\n"
        f"Model: {m.get('variant')} ({m.get('checkpoint') or 'weights given in memory'}), "
        f"dataset: {d.get('num_images')} images, {d.get('num_masks')} masks, "
        f"{t.get('images_per_s', float('nan')):.3g} images/s.\n\n{table}\n"
    )


def save_plot(
    path: str,
    title: str,
    xlabel: str,
    ylabel: str,
    curves: list[tuple[str, list[float], list[float]]],
    marker: str = "o",
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    points: list[tuple[str, float, float]] = (),
) -> None:
    """A line plot (one curve per ``(label, xs, ys)``) written atomically as PNG."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for label, xs, ys in curves:
        ax.plot(xs, ys, marker=marker, label=label)
    for label, x, y in points:
        ax.plot([x], [y], "s", label=label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xlim:
        ax.set_xlim(*xlim)
    if ylim:
        ax.set_ylim(*ylim)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


__all__ = ["SCHEMA", "result_document", "markdown_table", "markdown_report", "save_plot"]
