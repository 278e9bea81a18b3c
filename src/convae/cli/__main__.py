"""``python -m convae.cli`` (as ``python -m convae``)."""

import sys

from . import main

sys.exit(main())
