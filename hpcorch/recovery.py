"""Old path of :mod:`hpcorch.batch.recovery`, kept for one release.

Scripts rendered before the stage folders (queued or requeued across an upgrade, or a user's own
template) run ``python -m hpcorch.recovery``; this runs the same ``main``.
"""
import sys

from hpcorch.batch.recovery import main

if __name__ == "__main__":
    sys.exit(main())
