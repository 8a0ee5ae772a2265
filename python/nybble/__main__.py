"""``python -m nybble``: environment, build, devices and a self-check (see nybble.diagnostics)."""

import sys

from .diagnostics import main

sys.exit(main())
