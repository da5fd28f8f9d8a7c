"""GCS emulator fixtures (filled in by the gs:// destination work)."""
