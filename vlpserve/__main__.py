"""``python -m vlpserve``."""

import sys

from vlpserve.cli import main

sys.exit(main())
