"""The cost estimate of a run's object-storage content, from configured prices."""

from __future__ import annotations

import pytest

from producers.costs import GIB, CostEstimate, Prices, stored_bytes


def test_identical_contents_are_stored_once() -> None:
    assert stored_bytes([("a", 10), ("b", 5), ("a", 10)]) == 15
    assert stored_bytes([]) == 0


def test_storage_and_transfer_are_priced_per_gib() -> None:
    estimate = CostEstimate(3 * GIB, GIB, Prices(0.023, 0.09, "EUR"))
    assert estimate.storage_per_month == pytest.approx(0.069)
    assert estimate.transfer_to_read_once == pytest.approx(0.27)
    found = estimate.to_json()
    assert found["object_store_bytes"] == 3 * GIB and found["uploaded_bytes"] == GIB
    assert found["currency"] == "EUR" and found["prices"]["transfer_gb"] == 0.09
    assert "0.0690 EUR/month to store, 0.2700 EUR to read once" in estimate.line()
