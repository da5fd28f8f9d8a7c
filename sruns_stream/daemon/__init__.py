"""The daemon: the loop, moves and sweeps, leases between hosts, notifications, its log."""

__all__: list[str] = []
