"""Write the man page, docs/sruns-stream.1, from the command line's own parser (with
argparse-manpage), with each command's examples: `python scripts/make_manpage.py`.
`--check` exits 1 if the file checked in differs from what the parser makes now
(tests/test_cli_wrong_turns.py runs the same comparison). Read it with
`man -l docs/sruns-stream.1`, or install it as `man1/sruns-stream.1`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANPAGE = REPO / "docs" / "sruns-stream.1"


def _roff(text: str) -> str:
    """Plain text as roff: backslashes and hyphens escaped, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def render() -> str:
    from argparse_manpage.manpage import Manpage

    sys.path.insert(0, str(REPO))
    from sruns_stream import __version__, cli

    page = Manpage(cli._parser())
    page.description = "stream Illumina run folders as tar.gz to GCS or a local directory, resumably"
    page.source = f"sruns-stream {__version__}"
    page.manual = "sruns-stream manual"
    page.date = ""  # the file must not change by itself from one day to the next
    examples = []
    for name, (lines, _) in cli._HELP.items():
        examples += [".TP", f"\\fB{_roff(name)}\\fR", ".nf", *(_roff(line) for line in lines), ".fi"]
    page.add_section("examples", ">", "\n".join(examples))
    # In place of the --help epilog (wrapped for a terminal): the config's search order,
    # and the exit codes as a man page lists them.
    page.add_section("comments", "=", _roff(
        f"The config is --config FILE, else the file ${cli.CONFIG_ENV} names, else {cli.SYSTEM_CONFIG} "
        "if it exists, else none. Each command's --help ends with its examples and the exit codes it can end with."))
    codes = []
    for code, meaning in sorted(cli.EXIT_MEANINGS.items()):
        codes += [".TP", f"\\fB{code}\\fR", _roff(meaning)]
    page.add_section("exit status", ">", "\n".join(codes))
    return str(page)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the file checked in; write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not MANPAGE.is_file() or MANPAGE.read_text() != text:
            print(f"{MANPAGE} is not what the parser makes now: run python scripts/make_manpage.py", file=sys.stderr)
            return 1
        return 0
    MANPAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
