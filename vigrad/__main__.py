"""``python -m vigrad``: the ``vigrad`` command (for when its script is not on ``PATH``)."""

import sys

from vigrad.cli import main

if __name__ == "__main__":
    sys.exit(main())
