"""Builds the daemon's optional parts (Firestore mirror, mail) from the config."""

from __future__ import annotations

from .config import Config
from .firestore import Leases, StatusMirror, open_mirror
from .journal import Journal
from .notify import DEFAULT_SUBJECT_PREFIX, Notifier, make_notifier

__all__ = ["daemon_parts"]


def daemon_parts(config: Config, journal: Journal) -> tuple[StatusMirror, Notifier, Leases | None]:
    """The Firestore mirror (a no-op without a collection), the notifier (likewise
    without mail) and the run leases (only with Firestore: they live there)."""
    notifier = make_notifier(config.mail, subject_prefix=config.name or DEFAULT_SUBJECT_PREFIX)
    mirror = open_mirror(config, journal)
    leases = Leases(config.firestore_collection) if config.firestore_collection and config.leases else None
    return mirror, notifier, leases
