"""The planner: per-GPU memory (:mod:`.memory`) and time, throughput and checkpoint interval
(:mod:`.time`) of a job, from its spec and the profile alone. Torch-free: ``hpcorch plan`` runs it
on the login node; the tests check it against torch's own memory accounting."""
