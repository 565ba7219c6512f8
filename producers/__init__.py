"""Producers: repository bulk-ingest (source walking, file policy, content strategies)."""
