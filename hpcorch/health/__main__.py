"""``python -m hpcorch.health``, as scripts rendered before the stage folders call it: the same
``main`` as ``python -m hpcorch.batch.health``."""
import sys

from hpcorch.batch.health.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
