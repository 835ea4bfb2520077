"""python -m qcompile.cli ... (the same as the qcompile command)."""

import sys

from . import main

sys.exit(main())
