"""PostgreSQL for tests: a fresh database per test on the shared server, dropped afterwards.

The server is the one ``scripts/test`` makes sure of: 127.0.0.1:5432, user ``postgres``, trust
auth, database ``test`` (from which the throwaway databases are created and dropped).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

HOST, PORT = "127.0.0.1", 5432
ADMIN_URL = f"postgresql://postgres@{HOST}:{PORT}/test"


def database_url(name: str, port: int = PORT) -> str:
    return f"postgresql://postgres@{HOST}:{port}/{name}"


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """Yields the name of a new empty database; drops it (and its sessions) afterwards."""
    name = f"agent_test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield name
    finally:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def pg_database() -> AsyncIterator[str]:
    """The name of a fresh database on 127.0.0.1:5432."""
    async with fresh_database() as name:
        yield name


@pytest.fixture
async def pg_url(pg_database: str) -> str:
    """A ``postgresql://`` queue URL for a fresh database."""
    return database_url(pg_database)


async def fetch(name: str, query: str, *args: object) -> list[asyncpg.Record]:
    """Run one query on database ``name`` directly (not through the agent)."""
    con = await asyncpg.connect(database_url(name))
    try:
        rows: list[asyncpg.Record] = await con.fetch(query, *args)
        return rows
    finally:
        await con.close()
