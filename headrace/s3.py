"""Object-store client factory: a MinIO SDK client that fails fast.

The SDK's default HTTP pool waits minutes and retries on its own; headrace
retries with its own policy, so the pool here has short timeouts. The region
is given so that the first use of a bucket costs no extra lookup and
presigning never needs the network.
"""

from __future__ import annotations

import urllib3
from minio import Minio

from headrace.settings import ObjectStoreSettings


def make_minio(settings: ObjectStoreSettings, *, timeout_s: float = 10.0) -> Minio:
    pool = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=min(timeout_s, 3.0), read=timeout_s),
        retries=urllib3.Retry(total=0, redirect=0),
        maxsize=8,
    )
    return Minio(
        settings.endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key.get_secret_value(),
        secure=settings.secure,
        region=settings.region,
        http_client=pool,
    )
