"""Builds the daemon's optional parts (Firestore mirror, mail) from the config."""

from __future__ import annotations

from .config import Config
from .firestore import StatusMirror, open_mirror
from .journal import Journal
from .notify import DEFAULT_SUBJECT_PREFIX, Notifier, make_notifier

__all__ = ["daemon_parts"]


def daemon_parts(config: Config, journal: Journal) -> tuple[StatusMirror, Notifier]:
    """The Firestore mirror (a no-op without a collection) and the notifier (likewise without mail)."""
    notifier = make_notifier(config.mail, subject_prefix=config.name or DEFAULT_SUBJECT_PREFIX)
    return open_mirror(config, journal), notifier
