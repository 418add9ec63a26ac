"""The paper's scaling ablations at full scale (section 7.6, Figure 13): one axis at a
time around the default cell (ViT-H, all 11M SA-1B images, automatic masks only).

* ``stages``: the data engine's stages (section 4) as mixtures of sources
  (``data.train_dir = [(glob, weight), ...]``; a sample comes from a source with
  probability ``weight / sum(weights)``, so a weight is the stage's image count times
  its oversampling factor): manual; + semi-automatic; + automatic; + automatic with
  the manual and semi-automatic masks oversampled 10x (the paper's best); automatic only.
* ``images``: 0.1M, 1M and 11M images, as fractions of SA-1B chosen by image id
  (``data.fraction``; the 0.1M subset lies inside the 1M one).
* ``size``: ViT-B, ViT-L and ViT-H, each with its paper recipe (``configs/vit_*.py``).

Data locations: ``$SAM_JAX_DATA`` (default ``/data``) holds ``sa1b/`` (the released
SA-1B shards: automatic masks) and, for the stage axis, ``engine/manual/`` and
``engine/semi_automatic/`` (SA-1B-format shards of the first two stages' masks, which
were not released). 9 cells; see the README's Sweeps section for the cluster commands.
"""

import os

from train.sweep import Sweep, product, recipe

DATA = os.environ.get("SAM_JAX_DATA", "/data")
AUTO = os.path.join(DATA, "sa1b", "sa_*.tar")
MANUAL = os.path.join(DATA, "engine", "manual", "*.tar")
SEMI = os.path.join(DATA, "engine", "semi_automatic", "*.tar")
SA1B_IMAGES = 11_000_000
# Images of the first two stages (section 4): 4.3M masks on 120k images, +5.9M on 180k.
MANUAL_IMAGES, SEMI_IMAGES = 120_000, 180_000
OVERSAMPLE = 10

STAGES = {
    "manual": MANUAL,
    "+semi": ((MANUAL, MANUAL_IMAGES), (SEMI, SEMI_IMAGES)),
    "+auto": ((MANUAL, MANUAL_IMAGES), (SEMI, SEMI_IMAGES), (AUTO, SA1B_IMAGES)),
    "+auto_oversampled": (
        (MANUAL, OVERSAMPLE * MANUAL_IMAGES),
        (SEMI, OVERSAMPLE * SEMI_IMAGES),
        (AUTO, SA1B_IMAGES),
    ),
    "auto_only": AUTO,  # SA-1B as released
}
IMAGES = {"0.1M": 100_000, "1M": 1_000_000, "11M": SA1B_IMAGES}
SIZES = ("vit_b", "vit_l", "vit_h")
DEFAULT = {"stages": "auto_only", "images": "11M", "size": "vit_h"}


def _axes(**vary):
    levels = {
        "stages": {k: {"data.train_dir": v} for k, v in STAGES.items()},
        "images": {k: {"data.fraction": n / SA1B_IMAGES} for k, n in IMAGES.items()},
        "size": {s: recipe(f"configs/{s}.py", "configs/vit_h.py") for s in SIZES},
    }
    return {a: (levels[a] if a in vary else {DEFAULT[a]: levels[a][DEFAULT[a]]}) for a in levels}


def get_sweep() -> Sweep:
    return Sweep(
        base="configs/vit_h.py",
        overrides={"data.train_dir": AUTO, "data.eval_dir": os.path.join(DATA, "sa1b_heldout")},
        cells=(product(**_axes(stages=True)) + product(**_axes(images=True)) + product(**_axes(size=True))),
        eval={"batch_size": 8},
    )
