import sys

from querysep.cli import main

sys.exit(main())
