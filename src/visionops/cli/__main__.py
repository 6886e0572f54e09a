"""``python -m visionops.cli``."""

import sys

from visionops.cli.main import main

sys.exit(main())
