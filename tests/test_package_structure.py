"""The package's structure: no import cycle in ``sam_jax``, a jax-free geometry, one get_config."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(package: str = "sam_jax") -> dict[str, set[str]]:
    """``{module: {sam_jax modules it imports}}``, from every import statement in the files
    (also those inside functions); ``from a import b`` counts ``a.b`` when that is a module."""
    files = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    pkg = name.split(".")[: None if path.name == "__init__.py" else -1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    mod = ".".join(pkg + ([mod] if mod else []))
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in files and t != name}
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_detects_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_sam_jax_import_graph_has_no_cycle():
    graph = import_graph()
    # The walker sees imports at module level and inside functions.
    assert "sam_jax.checkpoint" in graph["sam_jax.sam_model"]
    assert "sam_jax.sam_model" in graph["sam_jax.cli"]  # imported inside a function
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    # The checkpoint module knows only the file format (and writes through the atomic
    # writer); geometry and the atomic writer are leaves.
    assert graph["sam_jax.checkpoint"] == {"sam_jax.atomic_io"}
    assert graph["sam_jax.geometry"] == set()
    assert graph["sam_jax.atomic_io"] == set()


def test_geometry_and_data_preprocess_import_without_jax():
    code = (
        "import sys\n"
        "import sam_jax, sam_jax.geometry, data.preprocess\n"
        "heavy = sorted(m for m in ('jax', 'flax', 'tensorflow') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "from sam_jax import SamPredictor\n"  # the lazy package still serves the API
        "assert 'jax' in sys.modules\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]


def test_geometry_matches_the_official_transform():
    transforms = pytest.importorskip("segment_anything.utils.transforms")
    from sam_jax.geometry import ResizeLongestSide, apply_boxes, apply_coords, resized_shape

    rng = np.random.default_rng(0)
    for h, w in [(480, 640), (640, 480), (1, 1500), (1023, 1025), (333, 777), (1024, 1024)]:
        theirs = transforms.ResizeLongestSide(1024)
        assert resized_shape(h, w, 1024) == theirs.get_preprocess_shape(h, w, 1024)
        pts = rng.uniform(0, max(h, w), (5, 2))
        boxes = rng.uniform(0, max(h, w), (3, 4))
        np.testing.assert_array_equal(apply_coords(pts, (h, w), 1024), theirs.apply_coords(pts, (h, w)))
        np.testing.assert_array_equal(apply_boxes(boxes, (h, w), 1024), theirs.apply_boxes(boxes, (h, w)))
    image = rng.integers(0, 256, (37, 61, 3), dtype=np.uint8)
    np.testing.assert_array_equal(
        ResizeLongestSide(128).apply_image(image), transforms.ResizeLongestSide(128).apply_image(image)
    )


def test_normalize_and_pad_agree_for_numpy_and_jax():
    import jax
    import jax.numpy as jnp

    from sam_jax.geometry import PIXEL_MEAN, PIXEL_STD, normalize, pad_to_square

    image = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    x = normalize(image)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x[2, 3], (image[2, 3] - PIXEL_MEAN) / PIXEL_STD, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.jit(normalize)(jnp.asarray(image))), x, rtol=1e-6)
    padded = pad_to_square(x, 8)
    assert padded.shape == (8, 8, 3) and not padded[5:].any() and not padded[:, 7:].any()
    np.testing.assert_array_equal(padded[:5, :7], x)
    with pytest.raises(ValueError, match="5x7"):
        pad_to_square(x, 6)


def test_get_config_variants_overrides_and_errors():
    from sam_jax.modeling.sam import SamConfig
    from sam_jax.modeling.variants import VARIANTS, get_config

    assert get_config("default") == get_config("vit_h") == VARIANTS["vit_h"]
    assert get_config("custom") == SamConfig()
    small = get_config("vit_b", image_size=512, encoder_global_attn_indexes=[1, 3])
    assert small == VARIANTS["vit_b"].replace(image_size=512, encoder_global_attn_indexes=(1, 3))
    hash(small)  # a static jit argument: lists from JSON/ml_collections become tuples
    assert get_config(small) is small and get_config(small, decoder_depth=3).decoder_depth == 3
    with pytest.raises(ValueError, match="unknown SAM variant 'vit_x'"):
        get_config("vit_x")
    with pytest.raises(ValueError, match="encoder_width"):
        get_config("vit_b", encoder_width=3)
