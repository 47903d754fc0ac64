"""``python -m hpcorch``: the same command as ``hpcorch`` (for environments without the script)."""
import sys

from .cli import main

sys.exit(main(prog_name="hpcorch"))
