"""``python -m b2b.cli``: the same as the ``b2b`` command."""

import sys

from b2b.cli.main import main

sys.exit(main())
