"""Builds the daemon's optional parts (Firestore mirror, mail) from the config."""

from __future__ import annotations

from typing import Any

from .config import Config
from .journal import Journal

__all__ = ["daemon_parts"]


def daemon_parts(config: Config, journal: Journal) -> tuple[Any, Any, Any]:
    """(mirror, notifier, event constructors) for the monitor; None where not configured."""
    return None, None, None
