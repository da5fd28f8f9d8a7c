"""Google Cloud Storage: the client and its one error table, the resumable upload, and compose/list/delete of parts."""

__all__: list[str] = []
