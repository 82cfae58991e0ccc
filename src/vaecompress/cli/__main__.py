"""`python -m vaecompress.cli`: the console script `vaecompress`."""

import sys

from vaecompress.cli import main

sys.exit(main())
