"""``python -m convae``: the ``convae`` command."""

import sys

from .entry import main

sys.exit(main())
