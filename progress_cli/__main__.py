import sys

from progress_cli import main

sys.exit(main())
