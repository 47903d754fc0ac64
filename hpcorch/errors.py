"""Errors that hpcorch reports to users as one clear line, never a traceback."""
from __future__ import annotations


class HpcorchError(Exception):
    """Base of every error the CLI prints without a traceback (exit status 2)."""

    exit_code = 2


_CUT = "... (cut)"
MAX_SHOWN = 60


def shown(value, limit: int = MAX_SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters, for echoing user input in one line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class ConfigError(HpcorchError):
    """A profile or job file is wrong: names the file, the key path and what was expected."""

    # Messages echo what the user wrote; a megabyte-long value must still give one short line.
    MAX_MESSAGE = 400

    def __init__(self, source: str, key: str, message: str):
        if len(message) > self.MAX_MESSAGE + len(_CUT):
            message = message[:self.MAX_MESSAGE] + _CUT
        source, key = source[:self.MAX_MESSAGE], key[:self.MAX_MESSAGE]
        self.source, self.key, self.message = source, key, message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


class PlanError(ConfigError):
    """A valid job does not fit the cluster profile it is planned on."""


class PlanErrors(PlanError):
    """Several independent plan errors of one job: ``str()`` is one line each (the CLI prints
    each as its own ``error:`` line); ``key``/``message`` are the first one's."""

    def __init__(self, errors: list[PlanError]):
        first = errors[0]
        super().__init__(first.source, first.key, first.message)
        self.errors = list(errors)
        self.args = ("\n".join(str(e) for e in self.errors),)

    def __str__(self) -> str:
        return self.args[0]


class RenderError(HpcorchError):
    """A value would reach the sbatch script without being validated or quoted."""


class RemoteError(HpcorchError):
    """The login node could not be reached or used over SSH: names the host and what to do."""
