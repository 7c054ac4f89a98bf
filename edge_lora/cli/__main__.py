"""``python -m edge_lora.cli``: the ``edge-lora`` command."""

import sys

from . import main

sys.exit(main())
