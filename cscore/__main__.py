import sys

from cscore.cli import main

sys.exit(main())
