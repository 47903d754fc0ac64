"""``python -m hpcorch``: the same command as ``hpcorch`` (for environments without the script)."""
import sys

from hpcorch.cli.main import main

sys.exit(main(prog_name="hpcorch"))
