"""ViT-H: lr 8e-4, layer decay 0.8, drop path 0.4, 90k steps, batch 256 (lr x0.1 at 60k, 86,666)."""

from configs.base import paper_variant


def get_config():
    return paper_variant("vit_h", lr=8e-4, layer_decay=0.8, drop_path=0.4, num_steps=90000, batch=256)
