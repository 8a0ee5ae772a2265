"""``python -m bitsandbytes``: the reference's header line, then nybble's report (``python -m nybble``)."""

import sys

from nybble.diagnostics import main

from . import __version__

sys.exit(main(title=f"bitsandbytes v{__version__}"))
