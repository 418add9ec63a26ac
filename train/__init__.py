"""SAM pretraining: prompt simulation, losses, optimiser, sharding, checkpoints, loop.

Entry points: ``python -m train --config configs/<name>.py`` (the loop),
``python -m train.demo``, ``python -m train.evaluate`` (run from the repository root).
Nothing here imports tensorflow at import time (only the data pipeline does, lazily).
"""
