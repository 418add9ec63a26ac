"""A CPU-scale family of the Figure 13 ablations (paper section 7.6): a tiny SAM at
three encoder widths on two fractions of a 500-image synthetic corpus.

6 cells of 300 steps (4 images x 4 masks, 3 decoder passes), each scored by
single-point mIoU on 32 held-out synthetic images. The architecture is pinned here
(128 px input, encoder depth 2 with one global block, window 4, prompt width 64),
so the committed results (``benchmarks/results/sweep-cpu-2026-11-30/``) do not move
when ``configs/tiny.py`` does.
"""

from train.sweep import Sweep, product

WIDTHS = (16, 32, 64)
FRACTIONS = (0.1, 1.0)
ARCH = {
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "encoder_global_attn_indexes": (1,),
    "image_size": 128,
    "window_size": 4,
    "prompt_embed_dim": 64,
    "mask_in_chans": 8,
    "decoder_depth": 2,
    "decoder_heads": 4,
    "decoder_mlp_dim": 256,
}


def get_sweep() -> Sweep:
    return Sweep(
        base="configs/tiny.py",
        overrides={
            "data.synthetic": True,
            "data.synthetic_images": 500,
            "data.global_batch_size": 4,
            "data.masks_per_image": 4,
            "sim.num_passes": 3,
            "sim.num_correction_points": 1,
            "sim.unroll": 3,
            "train.num_steps": 300,
            "train.log_every": 50,
            "ckpt.every": 100,
        },
        cells=product(
            width={w: {"model.overrides": dict(ARCH, encoder_embed_dim=w)} for w in WIDTHS},
            fraction=("data.fraction", FRACTIONS),
        ),
        scorer="single_point",  # the committed run's scorer; "points" gives mIoU at 1/3/5 clicks
        eval={"synthetic_batches": 8, "batch_size": 4},
    )
