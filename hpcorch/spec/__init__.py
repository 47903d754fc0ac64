"""The job and profile schema. Its ~70 config classes are dataclasses: in the CLI their generated
methods compile once per user, not once per process (:mod:`hpcorch.spec.classcache`)."""
