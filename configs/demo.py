"""The demo's config: a two-block tiny SAM on scenes 2 CPU cores learn in ~12 CPU-minutes.

``make demo`` (``train/demo.py``) trains this config on synthetic SA-1B shards written
with :data:`SCENE`. The network is SAM's and the training step the paper's recipe
(section 3, appendix A: interactive prompt simulation, focal + dice + IoU losses,
AdamW with layer decay); what differs from :func:`configs.tiny.get_config` is what it
trains on, for how long, the decoder's size and which prompts it simulates where,
because measurements of the original demo (closing note of issue 13) showed where its
steps went:

* **Scenes.** The original shards (5 objects, aspect 1-1.5, every mask over 8 px)
  resized to 128 px gave masks of a few 32x32 target cells: 7 of every 8 mask slots
  of a batch fell under ``loss.min_target_cells`` and trained nothing, and the
  held-out masks (over 400 px) were mostly smaller than anything trained on. Square
  scenes with 8 objects whose visible masks are annotated only from
  :data:`SCENE` ``["min_area"]`` (about 1.4 % of the image, >= 20 target cells) give
  about 5 usable masks per image, and the held-out set is the same distribution.
* **Scenes, second round** (closing note of issue 13, 2026-11-30). With 8 objects from
  500 px, the model fits its 192 training scenes (training first-pass mIoU 0.57)
  better than the held-out ones (0.46). 5 objects annotated from 1000 px (about 2.7 %
  of the image; 2.2 masks per image, median 6.7 % of the image) and 768 training
  scenes (:data:`TRAIN_IMAGES`; they take 5 s to write) cut that gap and leave the
  "no spatial signal" plateau earlier (150-200 steps instead of 250-275).
* **Batch.** 16 images x 2 masks (fourth round; it was 16 x 3): the decoder passes
  are over 90 % of a step and cost by the row, so 32 rows make a step 26 % cheaper
  than 48 (0.174 against 0.234 s, idle) while most images (2.2 masks on average)
  still give two real masks.
* **Scenes, fourth round** (closing note of issue 13, 2026-12-01). With 768 training
  scenes a run twice as long learned the training scenes (last pass 0.86) but not the
  held-out ones (0.738 at 5 clicks, as at half the steps). 6144 scenes
  (:data:`TRAIN_IMAGES`; 24 s to write in one process, 18 s in the demo's two) are
  seen 5 times in a run, and the training and held-out figures stay together.
* **Targets at 64 x 64** (``data.target_size``; the low-res logits are 32 x 32): the
  losses compare the logits upsampled bilinearly, as ``postprocess_masks`` upsamples
  them, with targets twice as fine, so the model learns where its boundary falls
  inside a low-res cell. A step costs 2 % more. Held-out 5-click mIoU (48 scenes)
  with the 6144 scenes and 2000 steps: 0.748 with 32 x 32 targets, 0.782 with
  64 x 64.
* **Passes.** 5 decoder passes, all 4 after the first with a correction click (the
  paper: 11 passes, 8 clicks): the held-out protocol scores up to 5 clicks, which 3
  correction clicks never trained.
* **Window 8**, the 8 x 8 grid itself: the tiny encoder's window of 14 (vit_b's)
  pads the grid to 14 x 14 in its windowed blocks. One unpadded window makes a step
  18 % cheaper; 1400 steps take the wall time that 1200 took (closing note of issue
  13, third round: held-out 5-click 0.731 against 0.717 on 48 scenes).
* **Focal weight 2** (the paper: 20, focal:dice 20:1). Probes of 300-400 steps on the
  demo's data: the plateau's length did not move with learning rate (4e-3 delays
  it), Adam's b2, warmup, layer decay or head width; focal weight 2 gave held-out
  0.42 / 0.50 at 1 / 5 clicks after 400 steps against 0.37 / 0.43.
* **The protocol's clicks** (``sim.farthest_prob=1``; the paper draws its points
  uniformly): the first point is the target cell farthest from the mask's boundary
  and each correction the error cell farthest from its region's boundary, where the
  held-out protocol (RITM's clicker) puts them (closing note of issue 13, sixth round).
  2000 steps, 1 / 3 / 5 clicks on the demo's 192 held-out scenes and on 192 of another
  seed: 0.64 / 0.74 / 0.76 and 0.66 / 0.75 / 0.78, against 0.62 / 0.73 / 0.76 and
  0.65 / 0.74 / 0.76 with uniform clicks.
* **Decoder: one two-way block of two heads** (``decoder_depth=1``, ``decoder_heads=2``;
  vit_b's: two blocks of eight). The decoder passes are most of a step: this config's
  step costs 0.67 of the fifth round's (0.225 against 0.334 s idle, measured one after
  the other; one block alone 0.83, two heads alone 0.83, the clicks nothing measurable),
  and one block of eight heads with the protocol's clicks scored 0.63 / 0.75 / 0.77 and 0.66 / 0.76 / 0.78
  at 2000 steps (two blocks: above).
* **2700 steps** take the time of about 1800 of the two-block decoder. Held-out
  (sixth round): 0.67 / 0.75 / 0.76 at 1 / 3 / 5 clicks, oracle 0.73 (the fifth round's
  2000 steps: 0.62 / 0.73 / 0.76, oracle 0.70), and 0.69 / 0.76 / 0.78 on the other
  seed's scenes. Steps are what limits the five-click figure (fifth round, two-block
  decoder, uniform clicks: 0.77 with 2400 steps, 0.80 with 5000). At about the same
  wall time, 96 px input (3000 steps), another lr schedule (x0.316 at 1000 and 1500;
  lr 4e-3 with 100 warm-up steps: 0.69), no layer decay (0.74), a single-pass warm-up
  and repeating masks to fill the batch scored 0.69-0.77 at 5 clicks, against 0.74 and
  0.76 for two seeds of the fifth round's config; a 128-wide encoder 0.72.
* **Decoded cache** (``data.cache_mb``, seventh round): the 6144 scenes are decoded
  once (JPEG, resize, RLE runs: about 70 % of a record's CPU, 1.2-1.9 of 2.0-2.7 ms)
  and later epochs only draw their masks and points; the batches are the same.
* **Batch 16, not 8** (seventh round): 8 images make a step 0.6 of 16's (0.137 against
  0.228 s idle), so 4600 steps take the wall time of 2700. Three runs of 8 x 2 for
  4600 steps scored 0.63-0.67 / 0.74-0.77 / 0.77-0.79 at 1 / 3 / 5 clicks (and 0.64-0.70
  / 0.75-0.78 / 0.78-0.80 on the other seed's scenes): on average +0.01 at five clicks
  and -0.02 at one, a trade inside the spread. That spread is wide: two of those runs
  differ only in XLA's thread count (one core or two), and scored 0.79 and 0.77 at five
  clicks, 0.67 and 0.63 at one, because the second left the early plateau 500 steps later.
  Batch 4 (7000 steps, lr 1.4e-3): 0.64 / 0.75 / 0.77. The third batch-8 run also left
  the 9 % of scenes without a usable mask out of the batches (``data.drop_bad``): 0.65 /
  0.76 / 0.78.
* **Point prompts only, and every slot a scene with a mask** (eighth round, closing
  note of issue 13, 2026-12-01). ``sim.box_prob=0`` (the paper starts half the rows
  with a noisy box): the held-out protocol clicks points only, and with boxes half of
  every batch's first passes trained a prompt it never scores. Two threads, 2700 steps,
  on the demo's held-out scenes and on the other seed's: 0.68 / 0.77 / 0.79 and
  0.72 / 0.79 / 0.80 at 1 / 3 / 5 clicks (box_prob 0.5: 0.67 / 0.75 / 0.76 and
  0.69 / 0.77 / 0.78), and every batch-16 run with it left the early plateau by step
  200 (first pass 0.26-0.39 there). ``data.drop_bad`` gives the slots of the 9 % of
  scenes without a usable mask to the next scenes (one core: 0.69 / 0.79 / 0.80 and
  0.72 / 0.80 / 0.81). Both, two threads: 0.69 / 0.79 / 0.80 and 0.72 / 0.80 / 0.81,
  oracle 0.77 and 0.78. Tried with point prompts and no better: the lr falling
  linearly to 0.02 x (0.67 / 0.76 / 0.77 and 0.71 / 0.78 / 0.79), focal alpha 0.5 (one
  core: 0.67 / 0.78 / 0.78 and 0.71 / 0.79 / 0.80), batch 8 x 2 (left the plateau only
  at step 900).
* **Where a step goes** (ninth round, 2026-12-01 night; idle, two threads). The step
  (0.24-0.26 s) is the encoder's forward and backward (about 90 ms: four 64-wide blocks
  on 16 x 64 tokens) and five decoder passes of about 27 ms each (one pass: 0.134 s a
  step; four: 0.214). Fewer rows or blocks, 2700 steps, on the demo's held-out scenes
  and the other seed's: 16 x 1 rows (0.175 s a step) scored 0.65 / 0.74 / 0.75 (oracle
  0.72), half the masks costing more than the time they save; an encoder of two blocks
  (``encoder_depth=2``, the second global; 0.212 s a step, 9 % fewer CPU-seconds in
  all) scored 0.70 / 0.79 / 0.80 (0.7997; oracle 0.76) and 0.72 / 0.79 / 0.81, this
  config's figures within their spread, and was not taken then because its five-click
  figure sat on the goal of 0.80 (the tenth round takes it, with 3000 steps). The
  two-block encoder with 2200 steps (the 10-minute budget's share) scored 0.68 / 0.78 /
  0.79 (oracle 0.75) in 786 s, its steps at 0.31 s in the loop against 0.21 s idle:
  steps, not step time, hold the five-click figure.
* **Two encoder blocks and 3000 steps** (tenth round, closing note of issue 13,
  2026-12-02), after three changes that leave the network's function as it was: GELU
  in torch's erf form (XLA:CPU's erfc, which ``jax.nn.gelu`` uses, is about 1.5x
  slower), the stride-equals-kernel convolutions (patch embedding, mask downscaling) as
  one matmul over the patches (``sam_jax.modeling.common.PatchConv``; XLA:CPU's
  convolution and its weight gradient are 2-5x slower), and Eigen's single-threaded
  kernels in ``train/demo.py``. The four-block encoder with 2700 steps then trained at
  0.27 s a step in the loop and scored 0.69 / 0.78 / 0.79 (oracle 0.76) in 907 s; two
  blocks with 3000 steps, in the same wall time (909 s, 36 s of it writing the shards
  in a slow hour), 0.70 / 0.79 / 0.81 (oracle 0.76) and 0.73 / 0.81 / 0.82 (oracle 0.79)
  on the other seed's scenes. The previous config took 1002 s for 0.69 / 0.79 / 0.80.
* **Unchanged in the eleventh round** (closing note of issue 13, 2026-12-02), which made
  the same run take 803 s (bit-identical figures): ``train/demo.py`` compiles the train
  step while it writes the shards, and the held-out evaluation decodes
  :data:`EVAL_MASKS_PER_BATCH` rows a call. 2500 steps scored 0.69 / 0.78 / 0.79 (oracle
  0.76) in 753 s: below the five-click goal, so the steps stay at 3000.
* **Unchanged in the twelfth round** (closing note of issue 13, 2026-12-02), which made
  the same run take 439 s (574 s an hour before; bit-identical figures): ``train/demo.py``
  keeps the step's freed buffers in one heap of the process
  (:func:`sam_jax.host_memory.keep_freed_memory` with ``one_heap``), where a quarter of the
  CPU had gone to faulting them in anew every step.

The real configs (``vit_b``/``vit_l``/``vit_h``) keep the paper's values.
"""

from configs.tiny import get_config as tiny_config

# data.synthetic.write_shards arguments of the demo's train and held-out shards.
SCENE = dict(short_side=192, aspect=1.0, num_objects=5, min_area=1000)
# Training scenes the demo writes (its held-out set: another seed).
TRAIN_IMAGES = 6144
# Held-out scenes (seed 12345): 192 give about 380 masks, a mean within about +/- 0.008.
# (48 scenes, 97 masks, read the shipped model's 5-click mIoU 0.02 above 192 other
# scenes: single small sets mislead by as much as the changes they are meant to judge.)
EVAL_IMAGES = 192
# Held-out masks scored by the point protocol: the same floor as the annotations.
EVAL_MIN_AREA = SCENE["min_area"]
# Prompt rows per decoder call in the held-out evaluation and the click pictures (one
# compiled shape per click count, shared by both): the scenes hold 2.2 masks on average,
# and every row of a call is decoded, padding included (16 rows: 25 s for the 192 scenes,
# 4 rows: 20 s; the figures are the same).
EVAL_MASKS_PER_BATCH = 4


def set_steps(c, steps: int) -> None:
    """Train config ``c`` for ``steps`` steps, the lr dropping (``optim.decay_factor``) at 80 %."""
    c.train.num_steps = steps
    c.optim.decay_steps = (int(steps * 0.8),)


def get_config():
    c = tiny_config()
    c.model.overrides = dict(
        c.model.overrides,
        window_size=8,
        decoder_depth=1,
        decoder_heads=2,
        encoder_depth=2,
        encoder_global_attn_indexes=(1,),
    )
    c.data.global_batch_size, c.data.masks_per_image = 16, 2
    c.data.cache_mb = 512
    c.data.drop_bad = True
    c.data.target_size = 64
    c.loss.min_target_cells = 12
    c.loss.focal_weight = 2.0
    c.sim.num_passes, c.sim.num_correction_points, c.sim.unroll = 5, 4, 4
    c.sim.farthest_prob = 1.0
    c.sim.box_prob = 0.0
    set_steps(c, 3000)
    c.train.log_every = 25
    c.ckpt.every = 500
    return c
