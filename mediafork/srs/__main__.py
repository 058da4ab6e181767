"""``python -m mediafork.srs``: the same as ``mediafork srs``."""

import sys

from .cli import main

sys.exit(main())
