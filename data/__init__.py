"""SA-1B input data for sam-jax.

Modules (importing ``data`` itself pulls in neither TensorFlow nor jax):

* ``data.batch``      - the batch format (keys, dtypes, shapes), declared once;
* ``data.sa1b``       - shard readers (tar streams, extracted folders, TFDS
  ``segment_anything`` tfrecords) and annotation parsing;
* ``data.rle``        - COCO compressed RLE -> runs, boxes, points, resized
  masks (numpy, no full-resolution masks);
* ``data.preprocess`` - one record -> fixed-shape arrays (resize, normalise,
  pad, K masks, boxes, points);
* ``data.pipeline``   - the tf.data pipeline (:class:`Pipeline`): sharding
  over processes, deterministic shuffling, epochs, resumption, stats;
* ``data.status``     - per-sample status codes / counter names;
* ``data.subsets``    - data fractions by image id, mixtures of sources with weights;
* ``data.stats``      - dataset statistics of a corpus (``python -m data.stats``);
* ``data.synthetic``  - deterministic synthetic SA-1B shard generator
  (``python -m data.synthetic``);
* ``data.synthetic_batch`` - in-memory synthetic batches (numpy only).

``Pipeline`` and ``generate_image`` / ``write_shards`` are re-exported lazily.
"""

from __future__ import annotations

import importlib

__all__ = ["Pipeline", "write_shards", "generate_image", "Status"]

_LAZY = {
    "Pipeline": "data.pipeline",
    "write_shards": "data.synthetic",
    "generate_image": "data.synthetic",
    "Status": "data.status",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'data' has no attribute {name!r}")
