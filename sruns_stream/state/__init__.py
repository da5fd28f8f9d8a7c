"""State: the SQLite journal (tasks, checkpoints, manifests, the outbox), its Firestore mirror,
and the status report."""

__all__: list[str] = []
