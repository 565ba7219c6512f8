"""The table archiver: old rows of PostgreSQL tables as RowEvents (issue 14)."""
