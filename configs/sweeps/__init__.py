"""Scaling-ablation sweeps (``get_sweep()`` returns a ``train.sweep.Sweep``; run with
``python -m train.sweep run configs/sweeps/<name>.py --workdir DIR``)."""
