"""`python -m sruns_stream` is the `sruns-stream` command."""

from .cli import main_cli

main_cli()
