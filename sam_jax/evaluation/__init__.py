"""Zero-shot evaluation: the paper's four transfer protocols (section 7, appendix D).

* :mod:`~sam_jax.evaluation.datasets` - COCO JSON, SA-1B, instance label maps;
* :mod:`~sam_jax.evaluation.points` - interactive point-to-mask (7.1, D.1);
* :mod:`~sam_jax.evaluation.edges` - edge detection, BSDS metrics (7.2, D.2);
* :mod:`~sam_jax.evaluation.proposals` - object proposals, mask AR (7.3, D.3);
* :mod:`~sam_jax.evaluation.instances` - instance segmentation from boxes (7.4, D.4);
* :mod:`~sam_jax.evaluation.report` - the result format (JSON, markdown, plots);
* :mod:`~sam_jax.evaluation.runner` - :func:`evaluate`, :func:`load_model` and
  ``sam-jax eval``.

::

    from sam_jax.evaluation import evaluate, load_dataset, load_model

    model, info = load_model("sam_vit_b_01ec64.pth")
    data = load_dataset("coco/annotations/instances_val2017.json", images="coco/val2017",
                        max_masks=10000)
    result = evaluate("points", data, model, out="out/points", model_info=info)
    print(result["metrics"]["miou"])
"""

from sam_jax.evaluation.datasets import DatasetError, EvalDataset, load_dataset
from sam_jax.evaluation.runner import PROTOCOLS, evaluate, load_model, make_protocol

__all__ = [
    "evaluate",
    "load_dataset",
    "load_model",
    "make_protocol",
    "PROTOCOLS",
    "EvalDataset",
    "DatasetError",
]
