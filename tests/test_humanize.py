"""One convention for numbers shown to people (humanize), as the CLI, status, mail and
webhook all show them."""

from __future__ import annotations

import pytest

from sruns_stream.humanize import ago, exact_bytes, hms, human_bytes, human_rate, ratio


def test_sizes_are_si_with_three_figures_and_the_exact_count_where_asked() -> None:
    assert [human_bytes(n) for n in (0, 512, 1500, 4_194_304_000, 11 * 10**12)] == [
        "0 B", "512 B", "1.5 kB", "4.19 GB", "11 TB"]
    assert exact_bytes(4_194_304_000) == "4.19 GB (4,194,304,000 bytes)"
    assert exact_bytes(999) == "999 B"


def test_the_ratio_is_raw_over_archive_everywhere() -> None:
    assert ratio(4_194_304_000, 2_600_000_000) == "1.61"
    assert ratio(100, 0) == "n/a"


def test_durations_rates_and_relative_times() -> None:
    assert (hms(172_900), hms(59.9), hms(None)) == ("48:01:40", "0:00:59", "-:--:--")
    assert human_rate(209_715_200) == "209.7 MB/s"
    assert (ago(-240), ago(300), ago(2 * 86400 + 5)) == ("in 4 min", "5 min ago", "2 days ago")


def test_sizes_given_are_binary_and_a_stated_default_reads_back_exactly() -> None:
    from sruns_stream.humanize import flag_size, parse_size

    assert parse_size("60M") == 62_914_560 == parse_size("60MiB") == parse_size("60mb")
    assert (parse_size("256K"), parse_size("1.5G"), parse_size("16777216")) == (262_144, 1_610_612_736, 16_777_216)
    for n in (1 << 20, 16 << 20, 5 * (1 << 40) - (1 << 30), 8 << 20, 12345):
        assert parse_size(flag_size(n)) == n
    assert (flag_size(1 << 20), flag_size(5 * (1 << 40) - (1 << 30))) == ("1M", "5119G")
    for bad in ("", "M", "1X", "nanM", "infG"):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_the_readme_states_the_convention_the_code_follows() -> None:
    """The README's one statement of the convention, against the code."""
    from pathlib import Path

    from sruns_stream.humanize import parse_size

    readme = " ".join((Path(__file__).resolve().parents[1] / "README.md").read_text().split())
    assert "Sizes and rates *shown*" in readme and "are SI: 1 MB = 10^6 bytes" in readme
    assert human_bytes(10**6) == "1 MB" and human_rate(10**6) == "1.0 MB/s"
    assert "`60M` = 62,914,560 bytes" in readme and parse_size("60M") == 62_914_560
    assert "(`60MiB` and `60MB` read the same)" in readme and parse_size("60MiB") == parse_size("60MB")
    assert "The compression ratio is raw / archive everywhere (1.68" in readme and ratio(168, 100) == "1.68"
