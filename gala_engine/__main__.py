"""``python -m gala_engine align|batch|params ...``: see :mod:`gala_engine.cli`."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
