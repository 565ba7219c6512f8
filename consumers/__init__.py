"""Consumers: the shared consumer runtime and the archive, verify, cache and load groups."""
