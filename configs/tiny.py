"""The ONE tiny SAM (tests, benchmarks, CPU training) and its training config.

:data:`TINY` has every structural feature of the real variants: windowed blocks
whose grid (16) needs padding to the window (14 -> 28), global blocks, and a
decoder narrower than 256. The parity tests and the benchmarks' ``--tiny`` runs
use it as is; :data:`TINY_TRAIN` is the same network at 128 px input (grid 8, one
padded window): :func:`get_config` trains it on a 2-core CPU and the benchmark
suite's ``--tiny`` smoke run measures it.

:data:`TINY_64` (fields :data:`TINY_64_FIELDS`) is the smallest SAM the tests train
or serve end to end: 64 px input (a 4x4 embedding grid, one window), two encoder
blocks (one windowed, one global), a 32-wide prompt/decoder. :data:`TINY_CLIP_FIELDS`
is the tiny random CLIP (``text.clip = "custom"``) that text-prompted training runs
with in tests and benchmarks (32 px crops, 4x4 patches, 32-wide embedding).
"""

from configs.base import base_config
from sam_jax.modeling.variants import get_config as get_sam_config

# SamConfig fields that replace vit_b's (the other fields are vit_b's).
TINY_FIELDS = dict(
    encoder_embed_dim=64,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(1, 3),
    image_size=256,
    prompt_embed_dim=64,
    decoder_mlp_dim=128,
)
TINY = get_sam_config("vit_b", **TINY_FIELDS)
TRAIN_IMAGE_SIZE = 128
TINY_TRAIN = TINY.replace(image_size=TRAIN_IMAGE_SIZE)
TINY_64_FIELDS = dict(
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    image_size=64,
    window_size=4,
    prompt_embed_dim=32,
    mask_in_chans=8,
    decoder_depth=2,
    decoder_heads=4,
    decoder_mlp_dim=64,
)
TINY_64 = get_sam_config("vit_b", **TINY_64_FIELDS)
TINY_CLIP_FIELDS = dict(
    embed_dim=32,
    image_size=32,
    patch_size=8,
    vision_width=32,
    vision_layers=2,
    vision_heads=2,
    text_width=32,
    text_layers=1,
    text_heads=2,
)


def get_config():
    c = base_config()
    c.model.variant = "vit_b"
    c.model.overrides = dict(TINY_FIELDS, image_size=TRAIN_IMAGE_SIZE)
    c.model.compute_dtype = "float32"
    c.model.remat_policy = "none"
    c.sim.unroll = 10
    c.optim.lr = 2e-3
    c.optim.layer_decay = 0.9
    c.optim.weight_decay = 0.05
    c.optim.warmup_steps = 20
    c.optim.decay_steps = (100000,)
    c.optim.grad_clip_norm = 1.0
    c.data.masks_per_image = 8
    c.data.global_batch_size = 8
    c.train.num_steps = 300
    c.train.log_every = 25
    c.ckpt.every = 100
    return c
