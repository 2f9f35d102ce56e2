"""`vigil demo` end to end on the test servers: the real command in a subprocess, fast. It
must find the injected db cascade as one incident with db as its root cause, say so, exit
0, leave its tables for the analyst queries it prints, and remove its topics."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from confluent_kafka.admin import AdminClient
from psycopg import sql

from pipeline import ROOT
from pipeline.demo import QUERIES
from pipeline.local.servers import Endpoints
from tests.integration.harness import wait_for

pytestmark = pytest.mark.integration

SPEED = 60.0  # the live part (about 17 minutes of event time) in about 17 s


@pytest.fixture
def demo_dsn(database_url: str) -> Iterator[str]:
    """The database the demo creates next to the configured one; dropped afterwards."""
    base = psycopg.conninfo.conninfo_to_dict(database_url)
    name = f"{base['dbname']}_demo"
    yield psycopg.conninfo.make_conninfo("", **{**base, "dbname": name})
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))


def test_demo_finds_the_cascade(endpoints: Endpoints, database_url: str, demo_dsn: str,
                                tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("VIGIL_") and k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env.update(VIGIL_KAFKA_BOOTSTRAP=endpoints.kafka_bootstrap, VIGIL_DATABASE_URL=database_url,
               VIGIL_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "demo", "--speed", str(SPEED)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = done.stdout
    assert done.returncode == 0, f"exit {done.returncode}\n{out[-6000:]}\n{done.stderr[-3000:]}"

    found = re.search(r"detected: (INC-\d{4}-\d{6}) root cause (\S+),", out)
    assert found is not None, out[-4000:]
    incident_id, root = found.groups()
    assert root == "db"
    assert re.search(rf"incident +CREATED +{incident_id} ", out), "no live incident line"
    assert re.search(r"alert +firing +\w+ on db ", out), "no live alert line for db"
    assert "\x1b[" not in out, "colour codes in output that is not a terminal"
    assert database_url not in out + done.stderr  # the DSN (and its password) stays secret

    with psycopg.connect(demo_dsn) as conn:
        services, cause = conn.execute(
            "SELECT services, root_cause_service FROM incidents WHERE incident_id = %s",
            (incident_id,)).fetchone() or ((), None)
        assert cause == "db" and {"db", "orders", "checkout"} <= set(services)
        rows = {title: conn.execute(query).fetchall() for title, query in QUERIES.items()}
    assert all(rows.values()), {title: len(r) for title, r in rows.items()}

    prefix = re.search(r"topics (demo\d{14}\.)\*", out)
    assert prefix is not None
    admin = AdminClient({"bootstrap.servers": endpoints.kafka_bootstrap})

    def gone() -> bool:
        return not any(t.startswith(prefix.group(1)) for t in admin.list_topics(timeout=30).topics)

    wait_for(gone, 30, f"the demo's topics {prefix.group(1)}* to be deleted")
