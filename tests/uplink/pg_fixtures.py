"""PostgreSQL for the receiver tests: a private throw-away cluster (``receiver.pgcluster``).

``postgres_server`` (session) is ``DHO_TEST_POSTGRES_DSN`` when that is set (a server of your
own), otherwise a private cluster started for the session, listening only on a Unix socket in
a temporary directory, with ``DHO_TEST_POSTGRES_DSN`` set to it for the session (so receiver
child processes see it too). It skips, with the reason, when the driver or the server binaries
are missing. ``pg_dsn`` gives each test a fresh schema in that server (dropped afterwards).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from receiver import pg, pgcluster

ENV = "DHO_TEST_POSTGRES_DSN"


@dataclass
class PgServer:
    dsn: str
    cluster: pgcluster.PrivateCluster | None  # None: a server given by DHO_TEST_POSTGRES_DSN


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    if not pg.available():
        pytest.skip("the psycopg driver is not installed (pip install -e '.[test]')")
    external = os.environ.get(ENV)
    if external:
        yield PgServer(external, None)
        return
    reason = pgcluster.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = pgcluster.PrivateCluster.start(settings={"deadlock_timeout": "200ms"})
    mp = pytest.MonkeyPatch()
    mp.setenv(ENV, cluster.dsn())
    try:
        yield PgServer(cluster.dsn(), cluster)
    finally:
        mp.undo()
        cluster.stop()


def schema_dsn(server: PgServer, schema: str) -> str:
    """The server's DSN with ``search_path`` set to ``schema``."""
    from psycopg.conninfo import make_conninfo

    return make_conninfo(server.dsn, options=f"-c search_path={schema}")


@pytest.fixture
def pg_dsn(postgres_server: PgServer) -> Iterator[str]:
    """A DSN whose tables live in a new, empty schema of the test server."""
    import psycopg
    from psycopg import sql

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema_dsn(postgres_server, schema)
    finally:
        with psycopg.connect(postgres_server.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
