"""Moved: the MinIO client factory is :func:`storage.objectstore.minio.make_minio`, in the
one module that imports the SDK. This name stays for callers not yet moved; code that
needs object storage uses :func:`storage.objectstore.open_storage`."""

from __future__ import annotations

from storage.objectstore.minio import make_minio

__all__ = ["make_minio"]
