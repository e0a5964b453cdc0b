"""The machine's services for the cluster tests (PostgreSQL 127.0.0.1:5432, RabbitMQ
127.0.0.1:5672): a database and a broker vhost of the test's own, created and dropped by it, so
nothing is left behind on the services CI shares."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=test"
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672"


def _postgres_or_skip():
    psycopg = pytest.importorskip("psycopg")
    try:
        return psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 ({str(exc).splitlines()[0]})")


@contextmanager
def scratch_database(prefix: str = "fw_test") -> Iterator[str]:
    """A new database (its libpq connection string), dropped afterwards whatever happened."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with _postgres_or_skip() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"host=127.0.0.1 port=5432 user=postgres dbname={name}"
    finally:
        with _postgres_or_skip() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@contextmanager
def scratch_vhost() -> Iterator[str]:
    """A RabbitMQ vhost of its own (the broker URL), deleted afterwards with its queues."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("rabbitmqctl not found: cannot give the test a vhost of its own")
    name = f"fw_test_{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", name)
    try:
        _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"{RABBITMQ}/{name}"
    finally:
        _rabbitmqctl("delete_vhost", name)
