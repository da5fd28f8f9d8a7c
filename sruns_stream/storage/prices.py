"""What an archive costs in GCS: the dated price table `archive --dry-run` and `status` use.

An estimate, said as one: list prices in US dollars per GiB (GCS bills binary
gigabytes), storage per month and the retrieval fee for reading bytes back, for a
few locations. Operations, network egress and taxes are left out (an archive is a few
objects: its operations cost cents). A facility with other prices sets
``price_region`` (a location below) and ``prices`` ({CLASS: [per GiB-month, per GiB
read]}) in the config; those override the table.

Source: https://cloud.google.com/storage/pricing ("Data storage" and "Retrieval
fees"), as stored copies of that page list them (the regional per-GB-month table;
multi-region figures are the page's per-GiB-hour rates times 730 hours), written down
on PRICES_DATE from those copies, not from the live page: check them against it, and
put your own in the config (``prices``) when they differ.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["MINIMUM_DAYS", "PRICES_DATE", "PRICES_SOURCE", "REGIONS", "Cost", "estimate"]

PRICES_DATE = "2026-12-07"
PRICES_SOURCE = "https://cloud.google.com/storage/pricing"
GiB = 1024**3

# Per GiB: (storage per month, retrieval) for STANDARD, NEARLINE, COLDLINE, ARCHIVE.
REGIONS: dict[str, dict[str, tuple[float, float]]] = {
    # Iowa, South Carolina, Oregon, Belgium, Finland: the cheapest single regions.
    "us-central1": {"STANDARD": (0.020, 0.0), "NEARLINE": (0.010, 0.01), "COLDLINE": (0.004, 0.02),
                    "ARCHIVE": (0.0012, 0.05)},
    "europe-west1": {"STANDARD": (0.020, 0.0), "NEARLINE": (0.010, 0.01), "COLDLINE": (0.004, 0.02),
                     "ARCHIVE": (0.0012, 0.05)},
    "us-east4": {"STANDARD": (0.023, 0.0), "NEARLINE": (0.013, 0.01), "COLDLINE": (0.006, 0.02),
                 "ARCHIVE": (0.0025, 0.05)},
    "us": {"STANDARD": (0.026, 0.0), "NEARLINE": (0.015, 0.01), "COLDLINE": (0.00875, 0.02),
           "ARCHIVE": (0.003, 0.05)},
    "eu": {"STANDARD": (0.026, 0.0), "NEARLINE": (0.015, 0.01), "COLDLINE": (0.00875, 0.02),
           "ARCHIVE": (0.003, 0.05)},
}
# Days an object is billed for at least, whenever it is deleted (or rewritten).
MINIMUM_DAYS = {"STANDARD": 0, "NEARLINE": 30, "COLDLINE": 90, "ARCHIVE": 365}


@dataclass(frozen=True)
class Cost:
    """An archive's bill: per month at rest, and for reading all of it back once."""

    storage_class: str
    region: str
    monthly: float
    read_back: float
    minimum_days: int

    def summary(self) -> str:
        minimum = f", billed at least {self.minimum_days} days" if self.minimum_days else ""
        return (f"{self.storage_class}: about ${self.monthly:,.2f} a month, ${self.read_back:,.2f} to read it "
                f"all back ({self.region} list prices of {PRICES_DATE}{minimum})")

    def as_dict(self) -> dict[str, object]:
        return {"storage_class": self.storage_class, "region": self.region, "monthly_usd": round(self.monthly, 2),
                "read_back_usd": round(self.read_back, 2), "minimum_days": self.minimum_days,
                "prices_date": PRICES_DATE}


def estimate(
    size: int, storage_class: str | None, region: str = "us-central1",
    overrides: Sequence[tuple[str, float, float]] = (),
) -> Cost:
    """What ``size`` bytes cost in ``storage_class`` (None: STANDARD, the usual bucket
    default) at ``region``'s prices, ``overrides`` ((class, per GiB-month, per GiB read))
    taking precedence."""
    if region not in REGIONS:
        raise ConfigError(f"price_region must be one of {', '.join(sorted(REGIONS))} "
                          f"(or set 'prices' in the config), not {region!r}")
    cls = storage_class or "STANDARD"
    table = {**REGIONS[region], **{c: (m, r) for c, m, r in overrides}}
    per_month, per_read = table[cls]
    gib = size / GiB
    return Cost(cls, region, gib * per_month, gib * per_read, MINIMUM_DAYS[cls])
