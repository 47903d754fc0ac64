"""The job and profile schema. Its ~70 config classes are dataclasses: their generated methods
compile once per user, not once per process (:mod:`hpcorch.spec.classcache`)."""
from hpcorch.spec import classcache

classcache.install()
