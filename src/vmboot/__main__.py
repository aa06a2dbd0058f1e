"""``python -m vmboot``: the same as the ``vmboot`` command."""

import sys

from vmboot.cli.main import main

sys.exit(main())
