"""Storage: object store, archive segments, content and clone caches, database sinks."""
