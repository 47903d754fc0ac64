"""Errors that hpcorch reports to users as one clear line, never a traceback."""
from __future__ import annotations


class HpcorchError(Exception):
    """Base of every error the CLI prints without a traceback (exit status 2)."""

    exit_code = 2


class ConfigError(HpcorchError):
    """A profile or job file is wrong: names the file, the key path and what was expected."""

    def __init__(self, source: str, key: str, message: str):
        self.source, self.key, self.message = source, key, message
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {message}")


class PlanError(ConfigError):
    """A valid job does not fit the cluster profile it is planned on."""


class RenderError(HpcorchError):
    """A value would reach the sbatch script without being validated or quoted."""
