"""sruns-stream: stream Illumina run folders as tar.gz to GCS or a local directory."""

__all__ = ["__version__"]

__version__ = "0.1.0"
