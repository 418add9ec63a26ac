"""Fine-tuning: a training run initialised from an official SAM checkpoint.

The tiny training model is built as an official ``segment-anything`` model with
random weights and saved with ``torch.save``; ``model.init_checkpoint`` points the
run at that ``.pth``. The first state holds exactly those weights (with a fresh
optimiser), training moves away from them, a restart resumes from the run's own
checkpoint instead of the ``.pth``, and a checkpoint of another shape fails with
an error naming the mismatched keys.
"""

import dataclasses
import os

import jax
import numpy as np
import pytest

from benchmarks.reference_sam import official_sam, torch
from configs.tiny import get_config
from sam_jax.checkpoint import CheckpointMismatchError, load_checkpoint, save_params
from sam_jax.modeling.variants import param_template
from sam_jax.sam_model import build_sam
from train.evaluate import restore_params
from train.loop import run
from train.train_step import build_module, sam_config_from


def _config(workdir, init_checkpoint, num_steps):
    c = get_config()
    c.train.workdir = str(workdir)
    c.train.num_steps = num_steps
    c.sim.num_passes, c.sim.num_correction_points, c.sim.unroll = 2, 1, 1
    c.data.synthetic = True
    c.data.masks_per_image, c.data.global_batch_size = 2, 2
    c.ckpt.every, c.ckpt.async_save = 1, False
    c.train.log_every = 1
    c.model.init_checkpoint = str(init_checkpoint)
    return c


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


def test_finetune_from_official_checkpoint(tmp_path):
    c = _config(tmp_path / "run", tmp_path / "official.pth", num_steps=2)
    torch.save(official_sam(sam_config_from(c), seed=7).state_dict(), tmp_path / "official.pth")
    want = load_checkpoint(tmp_path / "official.pth", param_template(build_module(c)))

    first = run(c, max_steps=0, progress=False)  # initialise only
    assert first["start_step"] == first["end_step"] == 0
    got = first["state"]
    for g, w in zip(_leaves(got.params), _leaves(want)):
        np.testing.assert_array_equal(g, w)
    assert all(not x.any() for x in _leaves(got.opt_state) if x.dtype.kind == "f")

    trained = run(c, progress=False)  # 2 steps from the checkpoint, saved at 1 and 2
    assert sorted(trained["losses"]) == [1, 2]
    moved = [float(np.abs(g - w).max()) for g, w in zip(_leaves(trained["state"].params), _leaves(want))]
    assert max(moved) > 0
    c.train.num_steps = 3
    resumed = run(c, progress=False)  # restores step 2, not the .pth
    assert resumed["start_step"] == 2 and sorted(resumed["losses"]) == [3]

    # A changed model config neither restarts from step 0 nor renames the run's checkpoints,
    # in training or in the read-only evaluation.
    ckpts = tmp_path / "run" / "checkpoints"
    before = sorted(os.listdir(ckpts))
    c.train.num_steps = 4
    c.model.overrides.decoder_mlp_dim = 64
    with pytest.raises(
        CheckpointMismatchError,
        match=r"checkpoints/3 does not fit the model.*"
        r"with wrong shapes \(opt_state/.*mask_decoder/",
    ):
        run(c, progress=False)
    with pytest.raises(CheckpointMismatchError, match="does not fit the model"):
        restore_params(c, str(tmp_path / "run"))
    assert sorted(os.listdir(ckpts)) == before


def test_finetune_from_checkpoint_of_another_shape_names_the_keys(tmp_path):
    c = _config(tmp_path / "run", tmp_path / "narrower.npz", num_steps=1)
    other = dataclasses.replace(sam_config_from(c), encoder_embed_dim=32)
    save_params(build_sam(other).params, tmp_path / "narrower.npz")
    with pytest.raises(CheckpointMismatchError, match="image_encoder"):
        run(c, progress=False)
