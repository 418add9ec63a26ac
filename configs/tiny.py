"""A tiny SAM that trains on a 2-core CPU (128 px input, width 64, depth 2)."""
from configs.base import base_config


def get_config():
    c = base_config()
    c.model.variant = "custom"
    c.model.custom = dict(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2,
                          encoder_global_attn_indexes=(1,), image_size=128, window_size=4,
                          prompt_embed_dim=64, mask_in_chans=8, decoder_depth=2,
                          decoder_heads=4, decoder_mlp_dim=256)
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
