"""The resolver and the caches as the settings describe them (no I/O until first use)."""

from __future__ import annotations

import threading
from datetime import timedelta

from headrace.settings import Settings
from storage.content.base import ContentRef
from storage.content.cache import ContentCache
from storage.content.download import Downloader
from storage.content.errors import ContentRefused
from storage.content.guard import allowed_endpoint
from storage.content.resolver import ContentResolver, ResolverPolicy
from storage.git_cache import GitCache, GitRefused, check_reference
from storage.objects import ContentAddressedStore
from storage.objectstore import open_storage

RESIGNED_FOR = timedelta(hours=1)


def open_cache(settings: Settings) -> ContentCache:
    return ContentCache(settings.cache.dir, int(settings.cache.max_size))


def endpoints(settings: Settings) -> tuple[tuple[str, str], ...]:
    """(scheme, host:port) of every object-store endpoint a presigned URL may point at."""
    found = [allowed_endpoint(settings.object_store.endpoint, settings.object_store.secure)]
    for extra in settings.cache.allowed_endpoints:
        scheme, sep, rest = extra.partition("://")
        if sep:
            found.append(allowed_endpoint(rest, scheme.lower() == "https"))
        else:
            found.append(allowed_endpoint(extra, settings.object_store.secure))
    return tuple(dict.fromkeys(found))


class KeySigner:
    """Signs a GET URL again by bucket and key, with the configured credentials."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings.object_store
        self._stores: dict[str, ContentAddressedStore] = {}
        self._lock = threading.Lock()

    def __call__(self, bucket: str, key: str) -> str:
        with self._lock:
            store = self._stores.get(bucket)
            if store is None:
                store = ContentAddressedStore(open_storage(self._settings, bucket))
                self._stores[bucket] = store
        return store.presign(key, RESIGNED_FOR)[0]

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
        self._stores.clear()


def signer(settings: Settings) -> KeySigner | None:
    """Signs URLs again by key, or None when no object-store credentials are configured."""
    store = settings.object_store
    if not store.access_key or not store.secret_key.get_secret_value():
        return None
    return KeySigner(settings)


class BucketChecker:
    """Whether a bucket exists at the configured object store (one request per call)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings.object_store

    def __call__(self, bucket: str) -> bool:
        storage = open_storage(self._settings, bucket)
        try:
            return storage.bucket_exists()
        finally:
            storage.close()


def bucket_checker(settings: Settings) -> BucketChecker:
    return BucketChecker(settings)


def open_resolver(settings: Settings, *, cache: bool = True) -> ContentResolver:
    """The content resolver of these settings: the content cache (unless ``cache`` is
    False), the clone cache for git references, and the hostile-reference rules."""
    config = settings.cache
    policy = ResolverPolicy(
        stream_threshold=int(config.stream_threshold),
        max_object_size=int(config.max_object_size),
        endpoints=endpoints(settings),
        buckets=(settings.object_store.bucket,),
    )
    git = GitCache.from_settings(settings.git)
    schemes = tuple(settings.git.allowed_schemes)

    def git_check(ref: ContentRef) -> None:
        try:
            check_reference(ref.git_url or "", ref.commit or "", ref.git_path, ref.blob_id, schemes)
        except GitRefused as exc:
            raise ContentRefused(ref.path, str(exc)) from None

    return ContentResolver(
        policy,
        downloader=Downloader(
            timeout_s=config.download_timeout_s,
            attempts=config.download_attempts,
            max_size=int(config.max_object_size),
        ),
        cache=open_cache(settings) if cache else None,
        signer=signer(settings),
        git=git,
        git_check=git_check,
    )
