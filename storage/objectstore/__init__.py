"""Object storage: one interface over one bucket, one sibling module per backend.

::

    base.py     ObjectStorage (the contract), ObjectInfo, the verified upload
    minio.py    MinioStorage: MinIO and S3 (the only module importing the minio SDK)
    memory.py   MemoryStorage: in memory, same rules, for unit tests

Callers type against :class:`ObjectStorage` and get one with :func:`open_storage`.
The content-addressed store (:mod:`storage.objects`), the archive's object backend
and its cold tier (:mod:`storage.archive`) are thin layers over it. Errors are
those of :mod:`storage.errors`.
"""

from __future__ import annotations

from headrace.settings import ObjectStoreSettings
from storage.objectstore.base import ObjectInfo, ObjectStorage

__all__ = ["ObjectInfo", "ObjectStorage", "open_storage"]


def open_storage(settings: ObjectStoreSettings, bucket: str | None = None) -> ObjectStorage:
    """The bucket ``bucket`` (by default ``settings.bucket``) of the service ``settings``
    names. Makes no request: the client is made, and the network first used, on the first
    call; ObjectStoreRefused at once for a bucket name S3 does not allow."""
    from storage.objectstore.minio import MinioStorage  # the SDK loads only when used

    return MinioStorage(settings, bucket)
