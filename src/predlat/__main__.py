import sys

from predlat.cli import main

sys.exit(main())
