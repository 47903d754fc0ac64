"""Switches read from the environment: ``0`` turns a default-on behaviour off."""
from __future__ import annotations

import os

from hpcorch.errors import ConfigError, shown


def on_unless_zero(name: str, off: str, on: str, error: type[ConfigError] = ConfigError) -> bool:
    """Whether ``$name`` leaves its behaviour on: unset, empty or ``1`` yes, ``0`` no (``off``
    and ``on`` say what each means). Any other value is ``error`` naming the variable: "false"
    or "no" would otherwise be taken silently for "yes"."""
    value = os.environ.get(name, "").strip()
    if value not in ("", "0", "1"):
        raise error(name, "", f"expected 0 ({off}) or 1 ({on}), got {shown(value)}")
    return value != "0"
