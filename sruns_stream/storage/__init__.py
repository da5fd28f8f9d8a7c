"""The storage contract and the stores: where an archive and its companions live, their formats,
and local, null and GCS stores."""

__all__: list[str] = []
