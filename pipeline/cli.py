"""The `vigil` command line."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from pipeline.local import servers
from pipeline.local.process import LaunchError
from pipeline.settings import Settings, load_settings

app = typer.Typer(help="Vigil: Kafka-native performance monitoring.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
db_app = typer.Typer(help="Database commands.", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topic commands.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration commands.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print figures.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(topics_app, name="topics")
app.add_typer(config_app, name="config")
app.add_typer(bench_app, name="bench")


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
def worker(loglevel: str = typer.Option("warn", help="crit|error|warn|info|debug"),
           supervise: bool = typer.Option(True, help="Run the pipeline in a child process "
                                          "and start it again if it stalls.")) -> None:
    """Run the pipeline: consume, aggregate, detect, alert; serve /health and /metrics."""
    if supervise:
        from pipeline.supervisor import supervise as run_supervised

        raise typer.Exit(run_supervised([sys.executable, "-m", "pipeline.cli", "worker",
                                         "--no-supervise", "--loglevel", loglevel]))
    import faust

    from pipeline.app import create_app
    from pipeline.db import connect, ensure_partitions, migrate

    settings = connected_settings()
    if settings.config_dir is not None:
        from pipeline.config import load_config
        from pipeline.configfile import ConfigError

        try:
            load_config(settings.config_dir, settings)
        except ConfigError as exc:
            raise _fail(f"invalid config in {settings.config_dir}:\n{exc}") from exc
    dsn = settings.database_dsn() or ""
    migrate(dsn)
    with connect(dsn) as conn:
        ensure_partitions(conn)
    from pipeline.kafka import create_topics

    create_topics(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    vigil = create_app(settings)
    faust.Worker(vigil.app, loglevel=loglevel, quiet=True).execute_from_commandline()


@app.command()
def demo(speed: float = typer.Option(None, help="Event seconds per wall second "
                                     "(default: fit the demo into about two minutes)."),
         keep: bool = typer.Option(False, help="Leave the servers running afterwards.")
         ) -> None:
    """Start everything, play a workload with an injected cascading incident, and show the
    alerts and incidents as they fire."""
    from pipeline.demo import run_demo

    settings = _settings()
    try:
        code = run_demo(settings, speed=speed, keep_servers=keep)
    except LaunchError as exc:
        raise _fail(str(exc)) from exc
    raise typer.Exit(code=code)


@app.command()
def tail(topic: str = typer.Argument(..., help="Short name (alerts) or full topic name."),
         from_beginning: bool = typer.Option(False, "--from-beginning"),
         limit: int = typer.Option(0, help="Stop after this many records (0: never)."),
         idle_timeout: float = typer.Option(0.0, help="Stop after this long without a record "
                                            "(seconds; 0: never).")) -> None:
    """Print a Vigil topic as JSON lines, decoded with its Avro schema."""
    import json
    import time
    import uuid

    from confluent_kafka import Consumer

    from pipeline.kafka import RECORD_TYPES, client_config
    from pipeline.tailing import to_json

    settings = connected_settings()
    short = topic.removeprefix(settings.topic_prefix)
    if short not in RECORD_TYPES:
        raise _fail(f"unknown topic {topic!r}; one of: {', '.join(sorted(RECORD_TYPES))}")
    consumer = Consumer({**client_config(settings), "group.id": f"vigil-tail-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest" if from_beginning else "latest",
                         "enable.auto.commit": False})
    consumer.subscribe([settings.topic(short)])
    printed, last = 0, time.monotonic()
    try:
        while not limit or printed < limit:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                if idle_timeout and time.monotonic() - last > idle_timeout:
                    break
                continue
            last = time.monotonic()
            typer.echo(json.dumps(to_json(RECORD_TYPES[short], message), sort_keys=True))
            printed += 1
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()


@app.command()
def load(services: int = typer.Option(10, min=1), series_per_service: int = typer.Option(20, min=1),
         rate: float = typer.Option(2000.0, help="Samples per second of event time."),
         duration: float = typer.Option(300.0, help="Seconds of event time."),
         speedup: float = typer.Option(0.0, help="Event seconds per wall second; 0: flat out."),
         seed: int = typer.Option(0),
         counter_reset_at: float = typer.Option(None, help="Reset counters after this many "
                                                "event seconds.")) -> None:
    """Produce a deterministic synthetic workload to the metrics topic."""
    import time

    from pipeline.kafka import client_config
    from pipeline.producer import MetricsProducer
    from pipeline.workload import Workload

    settings = connected_settings()
    now_ms = int(time.time() * 1000)
    start_ms = (now_ms - int(duration * 1000)) // 60_000 * 60_000  # ends by now: none "future"
    workload = Workload(seed=seed, services=services, series_per_service=series_per_service,
                        samples_per_s=rate, duration_s=duration, start_ms=start_ms,
                        counter_reset_s=counter_reset_at)
    producer = MetricsProducer(client_config(settings), settings.topic("metrics"),
                               source="vigil-load")
    started = time.monotonic()
    for chunk in workload.chunks():
        producer.add_many(chunk.name, chunk.labels, chunk.kind, chunk.ts_ms, chunk.values)
        if speedup > 0:
            due = (int(chunk.ts_ms[-1]) - start_ms) / 1000 / speedup
            ahead = due - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()
    elapsed = time.monotonic() - started
    typer.echo(f"produced {producer.samples_sent:,} samples in {producer.messages_sent:,} "
               f"messages over {elapsed:.1f}s ({producer.samples_sent / elapsed:,.0f}/s)")


@app.command()
def backtest(in_csv: Path = typer.Argument(..., exists=True, dir_okay=False),
             out_csv: Path = typer.Argument(...),
             kind: str = typer.Option("GAUGE", help="GAUGE|COUNTER|OBSERVATION"),
             width: float = typer.Option(None, help="Window width in seconds (default: the "
                                         "median step between rows)."),
             sensitivity: float = typer.Option(0.5, min=0.0, max=1.0),
             season: float = typer.Option(86400.0, help="Season in seconds; 0 disables.")
             ) -> None:
    """Score a `timestamp,value` CSV with Vigil's online detector, as the worker would."""
    from pipeline.backtest import backtest_csv

    try:
        anomalies = backtest_csv(in_csv, out_csv, width_s=width, sensitivity=sensitivity,
                                 kind=kind.upper(), season_s=season or None)
    except ValueError as exc:
        raise _fail(str(exc)) from exc
    typer.echo(f"wrote {out_csv}: {anomalies} anomalies")


@config_app.command("validate")
def config_validate(config_dir: Path = typer.Argument(None, help="Default: VIGIL_CONFIG_DIR.")
                    ) -> None:
    """Check every config file; print each problem as file:line: field: message."""
    from pipeline.config import load_config
    from pipeline.configfile import ConfigError

    directory = config_dir or _settings().config_dir
    if directory is None:
        raise _fail("no config directory: pass one or set VIGIL_CONFIG_DIR")
    try:
        summary = load_config(directory, _settings()).summary()
    except ConfigError as exc:
        typer.secho(str(exc), err=True, fg=typer.colors.RED)
        raise typer.Exit(code=1) from exc
    typer.echo(f"{directory}: {summary}")


@bench_app.command("ingest")
def bench_ingest(workload: list[str] = typer.Option(["standard", "scrape"], "--workload"),
                 messages: int = typer.Option(None, help="Messages per workload."),
                 partitions: int = typer.Option(4, min=1),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Samples/s of Vigil's ingest → aggregate → sinks against fastavro alone."""
    import json
    import os

    from pipeline.bench import WORKLOADS, run

    unknown = set(workload) - set(WORKLOADS)
    if unknown:
        raise _fail(f"unknown workload(s) {sorted(unknown)}; one of {sorted(WORKLOADS)}")
    settings = connected_settings()
    results = run(settings, workload, messages, partitions,
                  log=(lambda _: None) if as_json else typer.echo)
    summary = {r.workload: {"raw_samples_per_s": round(r.raw_samples_per_s),
                            "vigil_samples_per_s": round(r.vigil_samples_per_s),
                            "ratio": round(r.ratio, 3), "samples": r.samples} for r in results}
    summary["cores"] = os.cpu_count() or 0  # type: ignore[assignment]
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        for r in results:
            typer.echo(f"{r.workload:9s} raw {r.raw_samples_per_s:>12,.0f}/s   vigil "
                       f"{r.vigil_samples_per_s:>12,.0f}/s   ratio {r.ratio:.2f}")


def _redact(dsn: str) -> str:
    """Connection strings may carry passwords (in a URL's user part or query, or as a
    `password=` keyword); never print them."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError:
        return "<connection string that does not parse>"
    if "password" not in params:
        return dsn
    if "://" not in dsn:
        return make_conninfo("", **{**params, "password": "***"})
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@")
    query = urlencode([(k, "***" if k == "password" else v) for k, v in parse_qsl(parts.query)],
                      safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def main() -> None:
    app(prog_name="vigil")


if __name__ == "__main__":
    main()
