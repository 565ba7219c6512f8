"""What a run's content costs in object storage: an estimate from configured prices.

Object storage is content-addressed, so a run's stored bytes are the sizes of its
distinct object-storage contents (by sha256), whether this run uploaded them or found
them there already. Prices are per GiB (2**30 bytes, as S3 bills a "GB"):

- **storage per month**: the stored bytes at ``ingest.cost_storage_gb_month``
  (default 0.023, S3 Standard's first tier);
- **transfer to read once**: the stored bytes at ``ingest.cost_transfer_gb`` (default
  0.09, transfer out to the internet): what one consumer reading every object of
  the run from outside the store's region would cost. Uploads (transfer in) are
  free at the usual providers and are not priced.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GIB = 1 << 30


@dataclass(frozen=True)
class Prices:
    storage_gb_month: float = 0.023
    transfer_gb: float = 0.09
    currency: str = "USD"


@dataclass(frozen=True)
class CostEstimate:
    stored_bytes: int  # the run's distinct object-storage content
    uploaded_bytes: int  # of which this run uploaded
    prices: Prices

    @property
    def storage_per_month(self) -> float:
        return self.stored_bytes / GIB * self.prices.storage_gb_month

    @property
    def transfer_to_read_once(self) -> float:
        return self.stored_bytes / GIB * self.prices.transfer_gb

    def to_json(self) -> dict[str, Any]:
        return {
            "object_store_bytes": self.stored_bytes,
            "uploaded_bytes": self.uploaded_bytes,
            "storage_per_month": round(self.storage_per_month, 6),
            "transfer_to_read_once": round(self.transfer_to_read_once, 6),
            "currency": self.prices.currency,
            "prices": {
                "storage_gb_month": self.prices.storage_gb_month,
                "transfer_gb": self.prices.transfer_gb,
            },
        }

    def line(self) -> str:
        c = self.prices.currency
        return (
            f"object storage: {self.stored_bytes:,} bytes ({self.uploaded_bytes:,} uploaded now),"
            f" about {self.storage_per_month:.4f} {c}/month to store,"
            f" {self.transfer_to_read_once:.4f} {c} to read once"
        )


def stored_bytes(contents: Iterable[tuple[str, int]]) -> int:
    """The bytes of distinct contents among (sha256, size) pairs."""
    return sum(dict(contents).values())
