"""pytest fixtures for the flow tests (load with ``pytest_plugins = ["flow_fixtures"]``).

``harness``: a temporary Prefect server for a module (slow to start: one per module);
``pg_url``: a fresh PostgreSQL database for one test, dropped afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from conftest import fresh_pg_database


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Iterator[str]:
    """A temporary Prefect server (PREFECT_HOME in a temp folder), shared by a module; yields
    its API URL."""
    home = tmp_path_factory.mktemp("prefect-home")
    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED")}
    os.environ["PREFECT_HOME"] = str(home)
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        from prefect.settings import PREFECT_API_URL

        yield PREFECT_API_URL.value()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture()
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    from flows.segment_jobs import catalog_engine

    with fresh_pg_database("flows") as url:
        yield url
        catalog_engine.cache_clear()
