"""``export`` lines that point headrace's settings at the local stack."""

from __future__ import annotations

import shlex

from headrace.settings import Settings


def export_lines(settings: Settings) -> list[str]:
    """Shell lines for ``eval "$(headrace stack env)"``.

    They carry the local stack's own development credentials, which a shell
    needs in the clear; nothing else in headrace prints a secret unmasked.
    """
    pg = settings.postgres
    store = settings.object_store
    values = {
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
        "HEADRACE_REGISTRY__URL": settings.registry.url,
        "HEADRACE_OBJECT_STORE__ENDPOINT": store.endpoint,
        "HEADRACE_OBJECT_STORE__ACCESS_KEY": store.access_key,
        "HEADRACE_OBJECT_STORE__SECRET_KEY": store.secret_key.get_secret_value(),
        "HEADRACE_OBJECT_STORE__SECURE": str(store.secure).lower(),
        "HEADRACE_POSTGRES__HOST": pg.host,
        "HEADRACE_POSTGRES__PORT": str(pg.port),
        "HEADRACE_POSTGRES__USER": pg.user,
        "HEADRACE_POSTGRES__PASSWORD": pg.password.get_secret_value(),
        "HEADRACE_POSTGRES__DATABASE": pg.database,
    }
    return [f"export {key}={shlex.quote(value)}" for key, value in values.items()]
