"""The demo's config: the tiny SAM (``TINY_TRAIN``) on scenes a 2-core CPU can learn in ~10 min.

``make demo`` (``train/demo.py``) trains this config on synthetic SA-1B shards written
with :data:`SCENE`. The network and the training step are those of the paper's recipe
(section 3, appendix A: interactive prompt simulation, focal + dice + IoU losses,
AdamW with layer decay); what differs from :func:`configs.tiny.get_config` is what it
trains on and for how long, because measurements of the original demo (closing note
of issue 13) showed where its steps went:

* **Scenes.** The original shards (5 objects, aspect 1-1.5, every mask over 8 px)
  resized to 128 px gave masks of a few 32x32 target cells: 7 of every 8 mask slots
  of a batch fell under ``loss.min_target_cells`` and trained nothing, and the
  held-out masks (over 400 px) were mostly smaller than anything trained on. Square
  scenes with 8 objects whose visible masks are annotated only from
  :data:`SCENE` ``["min_area"]`` (about 1.4 % of the image, >= 20 target cells) give
  about 5 usable masks per image, and the held-out set is the same distribution.
* **Batch.** 8 images x 6 masks: nearly every decoder row is a real mask (was 4 x 16
  with ~8 valid of 64), so a step costs less and teaches more.
* **Passes.** 5 decoder passes with 3 correction clicks per step (the paper: 11 and
  8), the most a CPU step affords; the held-out protocol scores up to 5 clicks.

Still open (measured 2026-11-30 on a loaded machine): with these scenes the training
batches still sit on the "no spatial signal" plateau for the first hundreds of steps
(first-pass mIoU ~0.05 = the mask's share of the image, last pass 0.00), as the
original demo did; one fixed batch leaves it after ~65 steps
(``tests/test_train_learning.py``).

The real configs (``vit_b``/``vit_l``/``vit_h``) keep the paper's values.
"""

from configs.tiny import get_config as tiny_config

# data.synthetic.write_shards arguments of the demo's train and held-out shards.
SCENE = dict(short_side=192, aspect=1.0, num_objects=8, min_area=500)
# Held-out masks scored by the point protocol: the same floor as the annotations.
EVAL_MIN_AREA = SCENE["min_area"]


def get_config():
    c = tiny_config()
    c.data.global_batch_size, c.data.masks_per_image = 8, 6
    c.loss.min_target_cells = 12
    c.sim.num_passes, c.sim.num_correction_points, c.sim.unroll = 5, 3, 4
    c.train.num_steps = 1200
    c.optim.decay_steps = (int(c.train.num_steps * 0.8),)
    c.train.log_every = 25
    c.ckpt.every = 400
    return c
