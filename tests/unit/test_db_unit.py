"""Static checks of the migrations' TimescaleDB path (no TimescaleDB server here to run it)
and of how migration files are found and named."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from pipeline import SQL_DIR
from pipeline.db import MigrationError, load_migrations

HYPERTABLES = {
    "metric_aggregates", "anomalies", "alert_events", "incident_events", "slo_status",
    "dead_letters",
}
ALL_SQL = "\n".join(p.read_text() for p in sorted(SQL_DIR.glob("*.sql")))


def timeseries_declarations() -> dict[str, dict[str, str]]:
    """Named arguments of every vigil_create_timeseries(...) call, by table."""
    declarations = {}
    for call in re.findall(r"SELECT vigil_create_timeseries\((.*?)\n\);", ALL_SQL, re.S):
        args = dict(re.findall(
            r"(\w+)\s*=>\s*(\$cols\$.*?\$cols\$|ARRAY\[.*?\]|interval '[^']*'|'[^']*')", call, re.S
        ))
        declarations[args["table_name"].strip("'")] = args
    return declarations


def function_body(name: str) -> str:
    match = re.search(rf"CREATE FUNCTION {name}\(.*?\n\$\$;", ALL_SQL, re.S)
    assert match, f"function {name} not found in {SQL_DIR}"
    return match.group(0)


def columns(text: str) -> set[str]:
    return {c.strip().split()[0].strip('"') for c in text.split(",") if c.strip()}


def test_every_hypertable_is_declared_with_compression_and_retention():
    declarations = timeseries_declarations()
    assert set(declarations) == HYPERTABLES
    for table, args in declarations.items():
        for setting in ("chunk", "compress_after", "retain_for"):
            assert args.get(setting, "").startswith("interval '"), f"{table}: {setting}"


def test_hypertable_unique_keys_include_time_and_are_covered_by_compression_settings():
    for table, args in timeseries_declarations().items():
        time_column = args["time_column"].strip("'")
        keys = re.findall(r"UNIQUE \(([^)]*)\)", args["columns"])
        assert keys, f"{table}: no unique key, so replays would duplicate rows"
        compressed = columns(args["segment_by"].strip("'")) | columns(args["order_by"].strip("'"))
        for key in keys:
            assert time_column in columns(key), f"{table}: UNIQUE ({key}) lacks {time_column}"
            # TimescaleDB warns, and checks uniqueness slowly, when a key column is neither.
            assert columns(key) <= compressed, f"{table}: UNIQUE ({key}) vs {compressed}"


def test_timescaledb_path_calls_the_policy_functions_with_their_2x_signatures():
    body = function_body("vigil_create_timeseries")
    timescale_branches = re.findall(r"IF timescale THEN(.*?)(?:ELSE|END IF;\nEND)", body, re.S)
    timescale_sql = "\n".join(timescale_branches)
    assert re.search(r"create_hypertable\(table_name::regclass, time_column::name,\s*"
                     r"chunk_time_interval => chunk", timescale_sql)
    assert "timescaledb.compress, " in timescale_sql
    assert "timescaledb.compress_segmentby = %L" in timescale_sql
    assert "timescaledb.compress_orderby = %L" in timescale_sql
    assert re.search(r"add_compression_policy\(table_name::regclass, compress_after => "
                     r"compress_after,\s*if_not_exists => true\)", timescale_sql)
    assert re.search(r"add_retention_policy\(table_name::regclass, drop_after => retain_for,"
                     r"\s*if_not_exists => true\)", timescale_sql)
    assert "PARTITION BY RANGE" not in timescale_sql


def test_plain_postgresql_objects_are_only_made_without_timescaledb():
    # TimescaleDB ships its own time_bucket(); ours must not collide with it.
    guarded = re.search(r"DO \$do\$\nBEGIN\n\s+IF vigil_has_timescaledb\(\) THEN\n\s+RETURN;"
                        r"\n\s+END IF;(.*?)\$do\$;", ALL_SQL, re.S)
    assert guarded and "CREATE FUNCTION time_bucket(" in guarded.group(1)
    assert ALL_SQL.count("CREATE FUNCTION time_bucket(") == 1
    assert "CREATE EXTENSION timescaledb" in ALL_SQL


def test_migrations_load_in_order_with_checksums(tmp_path: Path):
    (tmp_path / "0002_second.sql").write_text("SELECT 2;")
    (tmp_path / "0001_first.sql").write_text("SELECT 1;")
    (tmp_path / "README.md").write_text("not a migration")
    loaded = load_migrations(tmp_path)
    assert [m.name for m in loaded] == ["0001_first.sql", "0002_second.sql"]
    assert loaded[0].sha256 == hashlib.sha256(b"SELECT 1;").hexdigest()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["0001_a.sql", "0001_b.sql"], r"0001_b\.sql: number 0001 is also used by 0001_a\.sql"),
        (["1_a.sql"], r"1_a\.sql: migration files are named NNNN_lowercase_words\.sql"),
        (["0001_Add-Table.sql"], r"0001_Add-Table\.sql: migration files are named"),
    ],
)
def test_ambiguous_migration_names_are_refused(tmp_path: Path, files: list[str], message: str):
    for name in files:
        (tmp_path / name).write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=message):
        load_migrations(tmp_path)


def test_repository_migrations_load():
    names = [m.name for m in load_migrations()]
    assert names == sorted(names) and names[0] == "0001_foundation.sql"
