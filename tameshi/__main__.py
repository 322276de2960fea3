import sys

from tameshi.cli import main

sys.exit(main())
