"""``python -m controller.cli`` is the ``mlexp`` command."""

import sys

from controller.cli import main

sys.exit(main())
