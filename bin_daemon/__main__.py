"""python -m bin_daemon"""

import sys

from bin_daemon.cli import main

sys.exit(main())
