"""hpcorch: describe a cluster and a training job once; plan, render, submit, resume."""

__version__ = "0.1.0"
