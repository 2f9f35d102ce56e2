"""The `vigil` command line."""

from __future__ import annotations

import shlex

import typer

from pipeline.local import servers
from pipeline.local.process import LaunchError
from pipeline.settings import Settings, load_settings

app = typer.Typer(help="Vigil: Kafka-native performance monitoring.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database commands.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topic commands.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(topics_app, name="topics")
app.add_typer(config_app, name="config")


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


def _settings() -> Settings:
    try:
        return load_settings()
    except Exception as exc:  # pydantic's message names the variable
        raise _fail(f"invalid settings: {exc}") from exc


def connected_settings() -> Settings:
    """Settings with both servers named (embedded ones must already run)."""
    settings = _settings()
    if settings.kafka_bootstrap is None and not servers.embedded_kafka(settings).running():
        raise _fail("Kafka is not running: run `vigil up` or set VIGIL_KAFKA_BOOTSTRAP")
    if settings.database_url is None and not servers.embedded_postgres(settings).running():
        raise _fail("PostgreSQL is not running: run `vigil up` or set VIGIL_DATABASE_URL")
    return servers.with_endpoints(settings)


@app.command()
def up() -> None:
    """Start the embedded Kafka broker and PostgreSQL server (those not set by env)."""
    settings = _settings()
    try:
        found = servers.up(settings)
    except LaunchError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"kafka     {found.kafka_bootstrap}")
    typer.echo(f"postgres  {_redact(found.database_url)}")
    typer.echo(f"state     {settings.home}")


@app.command()
def down() -> None:
    """Stop the embedded servers; their data stays under VIGIL_HOME."""
    try:
        stopped = servers.down(_settings())
    except LaunchError as exc:
        raise _fail(str(exc)) from exc
    typer.echo("stopped " + (", ".join(stopped) if stopped else "nothing (none was running)"))


@app.command()
def status(env: bool = typer.Option(False, "--env", help="Print `export` lines for eval.")) -> None:
    """Say what runs where."""
    settings = _settings()
    kafka = servers.embedded_kafka(settings)
    postgres = servers.embedded_postgres(settings)
    if env:
        found = servers.endpoints(settings)
        typer.echo(f"export VIGIL_KAFKA_BOOTSTRAP={shlex.quote(found.kafka_bootstrap)}")
        typer.echo(f"export VIGIL_DATABASE_URL={shlex.quote(found.database_url)}")
        typer.echo(f"export VIGIL_TOPIC_PREFIX={shlex.quote(settings.topic_prefix)}")
        return
    if settings.kafka_bootstrap:
        typer.echo(f"kafka     external {settings.kafka_bootstrap}")
    else:
        state = f"running pid {kafka.pid()}" if kafka.running() else "stopped"
        typer.echo(f"kafka     embedded {kafka.bootstrap} {state} (log {kafka.log_file})")
    if settings.database_url:
        typer.echo(f"postgres  external {_redact(settings.database_dsn() or '')}")
    else:
        state = f"running pid {postgres.pid()}" if postgres.running() else "stopped"
        typer.echo(f"postgres  embedded 127.0.0.1:{postgres.port} {state} "
                   f"(log {postgres.log_file})")
    typer.echo(f"state     {settings.home}")


@topics_app.command("create")
def topics_create() -> None:
    """Create every Vigil topic that is missing."""
    from pipeline.kafka import create_topics

    created = create_topics(connected_settings())
    typer.echo("created " + (", ".join(created) if created else "nothing (all exist)"))


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply the migrations in sql/ that have not been applied yet."""
    from pipeline.db import migrate

    settings = connected_settings()
    applied = migrate(settings.database_dsn() or "")
    typer.echo("applied " + (", ".join(applied) if applied else "nothing (up to date)"))


@app.command()
def worker(loglevel: str = typer.Option("warn", help="crit|error|warn|info|debug")) -> None:
    """Run the pipeline: consume, aggregate, detect, alert; serve /health and /metrics."""
    import faust

    from pipeline.app import create_app
    from pipeline.db import connect, ensure_partitions, migrate

    settings = connected_settings()
    dsn = settings.database_dsn() or ""
    migrate(dsn)
    with connect(dsn) as conn:
        ensure_partitions(conn)
    from pipeline.kafka import create_topics

    create_topics(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    vigil = create_app(settings)
    faust.Worker(vigil.app, loglevel=loglevel, quiet=True).execute_from_commandline()


def _redact(dsn: str) -> str:
    """Connection strings may carry passwords; never print them."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def main() -> None:
    app(prog_name="vigil")


if __name__ == "__main__":
    main()
