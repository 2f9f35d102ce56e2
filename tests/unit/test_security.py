"""Security basics that need no servers: SQL is always parameterised, secrets never show,
config files cannot run code and templates are never evaluated."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from pipeline import ROOT
from pipeline.aggregate import ClosedWindow
from pipeline.cli import app
from pipeline.config import load_config
from pipeline.configfile import ConfigError
from pipeline.rules import load_rules
from pipeline.scenarios import load_catalog
from pipeline.settings import Settings

SECRET = "Pa55-Vigil-Secret-7f3e"
SASL_SECRET = "Sasl-Vigil-Secret-91bc"

# -- (c) every SQL statement is parameterised -------------------------------------------

SQL_METHODS = {"execute", "executemany", "copy"}


def _is_dynamic_string(node: ast.expr, assigned: dict[str, ast.expr]) -> bool:
    """An f-string, `%` or `+` on strings, or `str.format`: text built from values."""
    if isinstance(node, ast.Name) and node.id in assigned:
        return _is_dynamic_string(assigned[node.id], {})
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return _is_text(node.left) or _is_text(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr == "format" and _is_text(node.func.value)
    return False


def _is_text(node: ast.expr) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)) \
        or isinstance(node, ast.JoinedStr) or (isinstance(node, ast.BinOp)
                                               and (_is_text(node.left) or _is_text(node.right)))


def unparameterised_sql(source: str) -> list[int]:
    """Lines of execute()/executemany()/copy() calls, and of psycopg `SQL(...)` pieces,
    whose SQL text is built by string formatting rather than passed as parameters or
    composed with psycopg.sql."""
    tree = ast.parse(source)
    found = []
    for scope in ast.walk(tree):
        if not isinstance(scope, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        assigned = {target.id: node.value for node in ast.walk(scope)
                    if isinstance(node, ast.Assign) for target in node.targets
                    if isinstance(target, ast.Name)}
        for node in ast.walk(scope):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else \
                func.id if isinstance(func, ast.Name) else ""
            if name in SQL_METHODS | {"SQL"} and _is_dynamic_string(node.args[0], assigned):
                found.append(node.lineno)
    return sorted(set(found))


@pytest.mark.parametrize("source", [
    'cur.execute(f"SELECT * FROM t WHERE id = {x}")',
    'conn.execute("SELECT * FROM t WHERE id = %s" % x)',
    'conn.execute("SELECT * FROM t WHERE id = " + x)',
    'cur.executemany("INSERT INTO {} VALUES (%s)".format(t), rows)',
    'cur.copy(f"COPY {t} FROM STDIN")',
    'sql.SQL(f"SELECT {column}")',
    'def f(x):\n    q = f"DELETE FROM t WHERE a = {x}"\n    conn.execute(q)',
])
def test_the_scan_finds_sql_built_from_strings(source: str) -> None:
    assert unparameterised_sql(source)


@pytest.mark.parametrize("source", [
    'conn.execute("SELECT * FROM t WHERE id = %s", (x,))',
    'conn.execute(sql.SQL("SELECT {} FROM t").format(sql.Identifier(c)))',
    'cur.copy(table.copy())',
    'conn.execute("SELECT 1 " "FROM t")',
])
def test_the_scan_lets_parameters_and_composition_through(source: str) -> None:
    assert unparameterised_sql(source) == []


def test_every_sql_statement_in_pipeline_and_agents_is_parameterised() -> None:
    files = sorted([*(ROOT / "pipeline").rglob("*.py"), *(ROOT / "agents").rglob("*.py")])
    assert len(files) > 20
    offenders = {str(path.relative_to(ROOT)): lines for path in files
                 if (lines := unparameterised_sql(path.read_text()))}
    assert offenders == {}


# -- (b) secrets never show ----------------------------------------------------------------

def secret_settings(dsn: str) -> Settings:
    return Settings(database_url=SecretStr(dsn), kafka_bootstrap="127.0.0.1:1",
                    kafka_sasl_mechanism="PLAIN", kafka_sasl_username="vigil",
                    kafka_sasl_password=SecretStr(SASL_SECRET))


DSNS = [f"postgresql://vigil:{SECRET}@db.example:5432/vigil",
        f"postgresql://vigil@db.example/vigil?password={SECRET}&sslmode=require",
        f"host=db.example port=5432 user=vigil password={SECRET} dbname=vigil",
        f"host=db.example user=vigil password='{SECRET}' dbname=vigil"]


@pytest.mark.parametrize("dsn", DSNS)
def test_settings_never_print_their_secrets(dsn: str) -> None:
    settings = secret_settings(dsn)
    for shown in (repr(settings), str(settings), settings.model_dump_json(),
                  str(settings.model_dump())):
        assert SECRET not in shown and SASL_SECRET not in shown
    assert settings.database_dsn() == dsn  # still usable by the code that needs it


@pytest.mark.parametrize("dsn", DSNS)
def test_vigil_status_redacts_the_database_password(dsn: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["status"], env={
        "VIGIL_HOME": str(tmp_path), "VIGIL_DATABASE_URL": dsn,
        "VIGIL_KAFKA_BOOTSTRAP": "127.0.0.1:1", "VIGIL_KAFKA_SASL_PASSWORD": SASL_SECRET})
    assert result.exit_code == 0, result.output
    assert "db.example" in result.output
    assert SECRET not in result.output and SASL_SECRET not in result.output


def test_invalid_settings_do_not_echo_the_secrets(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["status"], env={
        "VIGIL_HOME": str(tmp_path), "VIGIL_DATABASE_URL": DSNS[0],
        "VIGIL_KAFKA_SASL_PASSWORD": SASL_SECRET, "VIGIL_PARTITIONS": "zero"})
    assert result.exit_code == 1
    assert "partitions" in result.output.lower()
    assert SECRET not in result.output and SASL_SECRET not in result.output


# -- (d) config files cannot run code ----------------------------------------------------

CANARY = "vigil-canary"
PAYLOADS = [
    "!!python/object/apply:os.system ['touch {canary}']",
    "!!python/object/new:subprocess.Popen [['touch', '{canary}']]",
    "!!python/name:os.system",
    "!!python/module:os",
]
RULE = """kind: ThresholdRule
name: Slow
selector: latency
field: p99
op: '>'
value: 0.5
annotations:
  summary: {payload}
"""
SLO = """apiVersion: openslo/v1
kind: SLO
metadata: {{name: api-availability}}
spec:
  service: {payload}
  budgetingMethod: Occurrences
  timeWindow: [{{duration: 30d, isRolling: true}}]
  objectives: [{{target: 0.999}}]
  indicator:
    spec:
      ratioMetric:
        counter: true
        good:
          metricSource: {{type: vigil, spec: {{query: 'http_requests_total{{code!~"5.."}}'}}}}
        total:
          metricSource: {{type: vigil, spec: {{query: 'http_requests_total'}}}}
"""
INCIDENTS = """correlation_window: 5m
default_tier: {payload}
"""
RUNBOOKS = """HighLatency:
  action: scale_out
  parameters:
    replicas: {payload}
"""
KINDS = {"rules/slow.yaml": (RULE, 8), "slos/api.yaml": (SLO, 5),
         "incidents.yaml": (INCIDENTS, 2), "runbooks.yaml": (RUNBOOKS, 4)}


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_yaml_tags_are_refused_with_file_and_line_in_every_config_kind(
        kind: str, payload: str, tmp_path: Path) -> None:
    canary = tmp_path / CANARY
    text, line = KINDS[kind]
    path = tmp_path / "config" / kind
    path.parent.mkdir(parents=True)
    path.write_text(text.format(payload=payload.format(canary=canary)))
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path / "config")
    assert f"{kind}:{line}:" in str(refused.value)
    assert "!!python/" in str(refused.value)
    assert not canary.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_yaml_tags_are_refused_in_a_catalog_file(payload: str, tmp_path: Path) -> None:
    canary = tmp_path / CANARY
    path = tmp_path / "catalog.yaml"
    path.write_text(f"- service: api\n  team: {payload.format(canary=canary)}\n")
    with pytest.raises(ValueError, match=r"catalog\.yaml:2: .*!!python/"):
        load_catalog(path)
    assert not canary.exists()


def test_the_worker_config_is_checked_by_the_same_loader_as_validate() -> None:
    """`vigil worker` and `vigil config validate` both go through `load_config` (so every
    kind above is refused at start): the demo config loads, and the safe loader is the
    only YAML reader in the config path."""
    assert load_config(ROOT / "config" / "demo").summary()
    readers = [path for path in (ROOT / "pipeline").rglob("*.py")
               if "yaml.load(" in path.read_text() or "yaml.unsafe_load" in path.read_text()
               or "yaml.full_load" in path.read_text()]
    assert readers == []


@pytest.mark.parametrize("template, shown", [
    ("{0.__class__.__mro__}", "{0.__class__.__mro__}"),
    ("%(service)s {service!r} ${service}", "%(service)s {service!r} ${service}"),
    ("{{ service }} is {{ value | round(1) }}", "api is 1.4"),
    ("{{ labels.__dict__ }}|{{ labels.service }}", "|api"),  # a label lookup, no attribute
    ("{% for x in () %}{% endfor %}", "{% for x in () %}{% endfor %}"),
])
def test_annotation_templates_substitute_and_never_evaluate(template: str, shown: str,
                                                            tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(RULE.format(payload=repr(template)))
    rules = load_rules(tmp_path, widths_s=[10], grace_ms=0)
    row = ClosedWindow('latency{service="api"}', "latency", "api", {"service": "api"},
                       "OBSERVATION", 10, 0, 5, 4.0, 0.1, 1.5, 0.8, 0.2, None, None, 0.5, 1.0,
                       1.2, 1.4)
    (condition,) = rules.evaluate([row], now_ms=15_000)
    assert condition.annotations["summary"] == shown


@pytest.mark.parametrize("template", [
    "{{ __import__('os').system('touch x') }}",
    "{{ service.__class__ }}",
    "{{ value | attr('__class__') }}",
    "{{ service }}}}",
])
def test_annotation_templates_with_code_are_config_errors(template: str,
                                                          tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "r.yaml").write_text(RULE.format(payload=repr(template)))
    with pytest.raises(ConfigError, match=r"rules/r\.yaml:8: "):
        load_rules(tmp_path, widths_s=[10], grace_ms=0)
