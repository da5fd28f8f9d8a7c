"""Google Cloud Storage: the client, the resumable upload, and compose/list/delete of parts."""

__all__: list[str] = []
