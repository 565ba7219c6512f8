"""The load group: the current state of every ingested file, in SQLite or PostgreSQL."""
