"""ViT-B: lr 8e-4, layer decay 0.6, drop path 0.6, 180k steps, batch 128."""

from configs.base import paper_variant


def get_config():
    return paper_variant("vit_b", lr=8e-4, layer_decay=0.6, drop_path=0.6, num_steps=180000, batch=128)
