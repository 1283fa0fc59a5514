import sys

from fedstep.cli import main

sys.exit(main())
