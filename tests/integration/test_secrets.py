"""Secrets (issue 13): with every credential configured, nothing the system wrote holds one.

Two sweeps (a directory: inline and object storage; a private git remote over
smart HTTP: git references, fetched with the token by the cache and verify
groups), four failures (a git URL carrying a token, a repository the remote
does not have, a wrong PostgreSQL password, a wrong object-store secret key),
then ``verify run``, ``status``, ``runs list``, ``dlq list`` and ``settings``,
all at DEBUG. Then every place the run wrote to is scanned for every secret, as
written, percent-encoded, in base64 at each of its three alignments (both
alphabets), in hex and by its long words: each topic's raw keys, values and
headers, every file and file name under the test's directories (archive,
staging, caches, run state, repairs, instances), every row of the test's
PostgreSQL schema, every object of its bucket, and every byte printed to stdout
and stderr (the log). docs/reliability.md says what is not covered.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from confluent_kafka import Message
from psycopg import sql

from headrace.settings import (
    KafkaSettings,
    ObjectStoreSettings,
    PostgresSettings,
    RegistrySettings,
    load_settings,
)
from storage.objectstore import open_storage
from tests.gitserver import serving
from tests.integration.test_ingest import git
from tests.integration.topics import read_topic
from tests.unit.test_cli import run


def forms(secret: str) -> set[bytes]:
    """``secret`` as it could be written: plain, percent-encoded, hex, and base64 (standard
    and URL-safe) at each of the three offsets it can start at inside a longer text; and
    each of its words of 12 characters or more (a parser quoting a piece of it)."""
    raw = secret.encode()
    found = {raw, quote(secret, safe="").encode(), raw.hex().encode()}
    found |= {word.encode() for word in secret.split() if len(word) >= 12}
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            encoded = encode(b"\0" * pad + raw)
            # Only the characters made of the secret's bits alone, not the padding's.
            found.add(encoded[-(-8 * pad // 6) : 8 * (pad + len(raw)) // 6])
    return found


@pytest.fixture
def pg_role(postgres: PostgresSettings) -> Iterator[tuple[str, str, str]]:
    """A login role of the test's own with a distinctive password, and a schema it owns.

    The stack's own password is a common word: its bytes are in every topic name.
    """
    tag, token = uuid.uuid4().hex[:10], uuid.uuid4().hex
    user, schema = f"test_secrets_{tag}", f"test_{tag}"
    password = f"pg+pw/{token[:16]} '{token[16:]}"  # a space and a quote: one value still
    with psycopg.connect(postgres.conninfo(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(user), sql.Literal(password)
            )
        )
        conn.execute(f"GRANT CREATE ON DATABASE {postgres.database} TO {user}")
        conn.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {user}")
    try:
        yield user, password, schema
    finally:
        with psycopg.connect(postgres.conninfo(), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"DROP OWNED BY {user}")
            conn.execute(f"DROP ROLE IF EXISTS {user}")


def make_tree(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    for i in range(4):
        (root / "src" / f"m{i}.py").write_text(f"print({i})\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 16)  # over the inline limit
    return root


def raw_records(kafka: KafkaSettings, topic: str) -> list[bytes]:
    def whole(msg: Message) -> bytes:
        headers = b"".join(k.encode() + (v or b"") for k, v in msg.headers() or [])
        return (msg.key() or b"") + (msg.value() or b"") + headers

    return read_topic(kafka, topic, whole)


def table_dump(postgres: PostgresSettings, schema: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with psycopg.connect(postgres.conninfo(), autocommit=True) as conn:
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
        for (table,) in tables:
            with conn.cursor().copy(f'COPY "{schema}"."{table}" TO STDOUT') as copy:
                out[table] = b"".join(bytes(chunk) for chunk in copy)
    return out


def bucket_objects(settings: ObjectStoreSettings) -> dict[str, bytes]:
    storage = open_storage(settings)
    out: dict[str, bytes] = {}
    try:
        pending = [""]
        while pending:
            prefix = pending.pop()
            subs, names = storage.list(prefix)
            pending += [f"{prefix}{sub}/" for sub in subs]
            out.update({prefix + name: storage.get(prefix + name) for name in names})
    finally:
        storage.close()
    return out


class Scan:
    """What was written, by where; :meth:`findings` lists each secret found and where."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self._forms = {name: forms(value) for name, value in secrets.items()}
        self.places: dict[str, bytes] = {}

    def add(self, where: str, data: bytes) -> None:
        self.places[where] = self.places.get(where, b"") + data

    def add_tree(self, root: Path, skip: set[Path]) -> None:
        for path in sorted(root.rglob("*")):
            if path in skip or any(parent in skip for parent in path.parents):
                continue
            self.add(f"file name {path}", str(path).encode())
            if path.is_file() and not path.is_symlink():
                self.add(f"file {path}", path.read_bytes())

    def findings(self) -> list[tuple[str, str]]:
        return [
            (name, where)
            for where, data in self.places.items()
            for name, found in self._forms.items()
            if any(form in data for form in found)
        ]


def test_no_credential_is_in_anything_a_run_wrote(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kafka: KafkaSettings,
    registry: RegistrySettings,
    object_store: ObjectStoreSettings,
    postgres: PostgresSettings,
    pg_role: tuple[str, str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    tag = uuid.uuid4().hex[:10]
    pg_user, pg_password, schema = pg_role
    secrets = {
        # Configured but not sent: the local stack's Kafka listens PLAINTEXT only.
        "sasl password": f"sasl-pw-{uuid.uuid4().hex}",
        # Sent as basic auth on every registry request; the local registry ignores it.
        "registry password": f"reg+pw/{uuid.uuid4().hex}=",
        "object-store secret key": object_store.secret_key.get_secret_value(),
        "postgres password": pg_password,
        "git token": f"ghp-tok-{uuid.uuid4().hex}",
        "token in a git URL": f"url-tok-{uuid.uuid4().hex}",
        "wrong postgres password": f"wrong-pg-{uuid.uuid4().hex}",
        "wrong secret key": f"wrong-s3-{uuid.uuid4().hex}",
    }
    work = tmp_path / "w"  # everything the system writes goes under here
    topics = {kind: f"test.secrets-{tag}.{kind}" for kind in ("files", "runs", "verify", "dlq")}
    # The credentials come from a config file, as in a deployment: none of them is in
    # the environment, where the log redactor would find it on its own.
    config = tmp_path / "headrace.toml"
    config.write_text(
        f"""
[kafka]
sasl_password = "{secrets["sasl password"]}"
[registry]
username = "headrace"
password = "{secrets["registry password"]}"
[object_store]
access_key = "{object_store.access_key}"
secret_key = "{secrets["object-store secret key"]}"
[postgres]
user = "{pg_user}"
password = "{pg_password}"
"""
    )
    values = {
        "HEADRACE_CONFIG": str(config),
        "HEADRACE_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "HEADRACE_KAFKA__PARTITIONS": "3",
        "HEADRACE_KAFKA__TOPICS__FILE_EVENTS": topics["files"],
        "HEADRACE_KAFKA__TOPICS__RUN_EVENTS": topics["runs"],
        "HEADRACE_KAFKA__TOPICS__VERIFICATIONS": topics["verify"],
        "HEADRACE_KAFKA__TOPICS__DEAD_LETTER": topics["dlq"],
        "HEADRACE_REGISTRY__URL": registry.url,
        "HEADRACE_OBJECT_STORE__ENDPOINT": object_store.endpoint,
        "HEADRACE_OBJECT_STORE__BUCKET": f"test-secrets-{tag}",
        "HEADRACE_POSTGRES__HOST": postgres.host,
        "HEADRACE_POSTGRES__PORT": str(postgres.port),
        "HEADRACE_POSTGRES__DATABASE": postgres.database,
        "HEADRACE_LOAD__BACKEND": "postgres",
        "HEADRACE_LOAD__POSTGRES_SCHEMA": schema,
        "HEADRACE_CONSUMER__GROUP_PREFIX": f"test-{tag}.",
        "HEADRACE_CONSUMER__METRICS_PORT": "0",
        "HEADRACE_GIT__ALLOWED_SCHEMES": '["https", "http"]',
        "HEADRACE_INGEST__STATE_DIR": str(work / "runs"),
        "HEADRACE_ARCHIVE__ROOT": str(work / "archive"),
        "HEADRACE_ARCHIVE__STAGING": str(work / "archive-staging"),
        "HEADRACE_CACHE__DIR": str(work / "content-cache"),
        "HEADRACE_GIT__CACHE_DIR": str(work / "git-cache"),
        "HEADRACE_VERIFY__REPAIRS_DIR": str(work / "repairs"),
        "HEADRACE_VERIFY__INSTANCES_DIR": str(work / "instances"),
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    for key in ("PGPASSWORD", "HEADRACE_OBJECT_STORE__SECRET_KEY", "HEADRACE_POSTGRES__PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    scan = Scan(secrets)
    printed: list[str] = []

    def cli(*argv: str) -> tuple[int, str]:
        code, out, err = run(["--log-level", "debug", *argv], capsys)
        printed.append(out + err)
        return code, out

    def sweep(*argv: str) -> dict[str, Any]:
        code, out = cli("sweep", *argv, "--inline-limit", "1KiB", "--json")
        result: dict[str, Any] = json.loads(out)
        assert code == 0 and result["ok"], printed[-1]
        return result

    swept = sweep(str(make_tree(tmp_path / "tree")))
    assert swept["ingest"]["counts"]["inline"] == 4
    assert swept["ingest"]["counts"]["object_storage"] == 1

    repo = make_tree(tmp_path / "repo")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "one")
    with serving(repo, tmp_path / "served", secrets["git token"]) as server:
        origin = f"http://127.0.0.1:{server.server_address[1]}"
        credential = {"url_prefix": origin + "/", "token": secrets["git token"]}
        monkeypatch.setenv(
            "HEADRACE_GIT__CREDENTIALS", json.dumps([{**credential, "allow_http": True}])
        )
        referenced = sweep(f"{origin}/repo.git", "--content-strategy", "git_reference")
        assert referenced["ingest"]["counts"]["git_reference"] == 5
        sent = base64.b64encode(f"x-access-token:{secrets['git token']}".encode()).decode()
        assert (fetches := [p for p, auth in server.requests if auth == f"Basic {sent}"])
        assert any("upload-pack" in p for p in fetches[1:]), "the groups fetched no blob"

        url = f"http://x-access-token:{secrets['token in a git URL']}@127.0.0.1:1/missing.git"
        code, _out = cli("ingest", url, "--json")
        assert code != 0
        code, _out = cli("ingest", f"{origin}/missing.git", "--json")
        assert code != 0

    monkeypatch.setenv("HEADRACE_POSTGRES__PASSWORD", secrets["wrong postgres password"])
    code, _out = cli("db", "stats")
    assert code != 0 and "password authentication failed" in printed[-1], printed[-1]
    monkeypatch.delenv("HEADRACE_POSTGRES__PASSWORD")
    monkeypatch.setenv("HEADRACE_OBJECT_STORE__SECRET_KEY", secrets["wrong secret key"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "big.bin").write_bytes(b"x" * 5000)
    code, _out = cli("ingest", str(tmp_path / "other"), "--content-strategy", "object_storage")
    assert code != 0
    monkeypatch.delenv("HEADRACE_OBJECT_STORE__SECRET_KEY")

    for run_id in (swept["run_id"], referenced["run_id"]):
        code, _out = cli("verify", "run", run_id, "--json")
        assert code == 0, printed[-1]
    for argv in (["status", "--json"], ["runs", "list", "--json"], ["dlq", "list", "--json"]):
        code, _out = cli(*argv)
        assert code == 0, printed[-1]
    assert cli("settings")[0] == 0
    assert any("DEBUG" in text for text in printed), "no debug log line to scan"

    scan.add("stdout and stderr", "\n".join(printed).encode())
    for kind, topic in topics.items():
        records = raw_records(kafka, topic)
        assert records or kind == "dlq", topic
        scan.add(f"topic {topic}", b"".join(records))
    scan.add_tree(tmp_path, skip={config, tmp_path / "served"})
    for table, rows in table_dump(postgres, schema).items():
        scan.add(f"table {schema}.{table}", rows)
    settings = load_settings()
    for key, data in bucket_objects(settings.object_store).items():
        scan.add(f"object {key}", data)
    assert len(scan.places) > 20
    assert scan.findings() == []
