"""Old path of :mod:`hpcorch.batch.health`, kept for one release: scripts rendered before the stage
folders run ``python -m hpcorch.health preflight ...`` (see ``__main__``)."""
