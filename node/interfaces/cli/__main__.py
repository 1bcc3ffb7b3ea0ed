"""`python -m node.interfaces.cli` (what tests and the demo spawn): the same as the `fednode` script."""

import sys

from node.interfaces.cli.main import main

sys.exit(main())
