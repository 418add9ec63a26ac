"""ViT-L: lr 4e-4, layer decay 0.8, drop path 0.4, 180k steps, batch 128."""

from configs.base import paper_variant


def get_config():
    return paper_variant("vit_l", lr=4e-4, layer_decay=0.8, drop_path=0.4, num_steps=180000, batch=128)
