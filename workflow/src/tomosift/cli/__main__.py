"""``python -m tomosift.cli``: the ``tomosift`` command line."""

import sys

from tomosift.cli import main

sys.exit(main())
