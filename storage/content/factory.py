"""The resolver and the caches as the settings describe them (no I/O until first use)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from headrace.settings import Settings
from storage.content.base import ContentRef
from storage.content.cache import ContentCache
from storage.content.download import Downloader
from storage.content.errors import ContentRefused
from storage.content.guard import allowed_endpoint
from storage.content.resolver import ContentResolver, ResolverPolicy, Signer
from storage.git_cache import GitCache, GitRefused, check_reference

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


def signer(settings: Settings) -> Signer | None:
    """Signs URLs again by key, or None when no object-store credentials are configured."""
    store = settings.object_store
    if not store.access_key or not store.secret_key.get_secret_value():
        return None
    from storage.objects import MinioObjectStore  # noqa: PLC0415 - the SDK only when signing

    stores: dict[str, MinioObjectStore] = {}

    def sign(bucket: str, key: str) -> str:
        if bucket not in stores:
            stores[bucket] = MinioObjectStore(store.model_copy(update={"bucket": bucket}))
        return stores[bucket].presign(key, RESIGNED_FOR)[0]

    return sign


def bucket_checker(settings: Settings) -> Callable[[str], bool]:
    """Whether a bucket exists at the configured object store (one request per call)."""
    from storage.objectstore import open_storage  # noqa: PLC0415 - the SDK only when asked

    def exists(bucket: str) -> bool:
        return open_storage(settings.object_store, bucket).bucket_exists()

    return exists


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
    token = settings.git.token.get_secret_value() if settings.git.token else None

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
        git_token=token,
    )
