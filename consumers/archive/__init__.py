"""The archive group: every event, append-only, in date-partitioned segments."""
