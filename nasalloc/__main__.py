import sys

from nasalloc.cli import main

sys.exit(main())
