"""Pure helpers of the consumer runtime (the loop itself runs against real Kafka in
tests/integration/test_runtime.py)."""

from consumers.runtime import describe_partitions


def test_assigned_partitions_are_logged_folded_per_topic() -> None:
    given = [("f", 2), ("f", 0), ("f", 1), ("f", 7), ("r", 0), ("f", 9), ("f", 8), ("f", 1)]
    assert describe_partitions(given) == "f[0-2,7-9], r[0]"
    assert describe_partitions([("f", 3)]) == "f[3]"
    assert describe_partitions([]) == ""
