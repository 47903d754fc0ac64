"""Hand jobs to a scheduler, and answer for them: one backend per scheduler kind
(``backend.py`` the interface; ``slurm.py``, ``local.py``, ``process.py``; the remote one is
``hpcorch.remote.backend``), and ``executor.py``, which gives submitit our rendered script."""
