"""``python -m train --config configs/<name>.py [--config.key=value ...]`` (see train.loop)."""

import sys

from train.loop import main

sys.exit(main())
