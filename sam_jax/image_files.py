"""Which files are images: the suffixes the command line (``generate``) and the annotation
tool (``sam_jax.annotate``) treat as images (anything PIL reads with these names)."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

__all__ = ["IMAGE_SUFFIXES"]
