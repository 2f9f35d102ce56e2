"""A PostgreSQL server from the machine's binaries, in its own data directory and port.

PostgreSQL refuses to run as root, so under root the server runs as an unprivileged
account (Debian's `postgres`, else a `vigil` system user created on demand).
"""

from __future__ import annotations

import glob
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from pipeline.local.process import LaunchError, port_open, read_pid, spawn, terminate, wait_until

SUPERUSER = "vigil"
DATABASE = "vigil"


def find_bindir() -> Path | None:
    """The newest PostgreSQL server binaries on the machine."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name))
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def install_postgres() -> Path:
    """Debian's package, when we are root and the binaries are missing."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise LaunchError("PostgreSQL server binaries not found; install PostgreSQL (15+) "
                          "or set VIGIL_DATABASE_URL")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-q"],
                 ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"]):
        result = subprocess.run(argv, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise LaunchError(f"{' '.join(argv)} failed:\n{result.stderr[-2000:]}")
    bindir = find_bindir()
    if bindir is None:
        raise LaunchError("installed postgresql but found no initdb")
    return bindir


def _service_user() -> str | None:
    """None when we may run the server ourselves (not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "vigil"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    "vigil"], check=True)
    return "vigil"


def _can_traverse(user: str, path: Path) -> bool:
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                           "--", "test", "-x", str(path)],
                          capture_output=True).returncode == 0


@dataclass(frozen=True)
class EmbeddedPostgres:
    home: Path
    port: int

    @property
    def root(self) -> Path:
        return self.home / "postgres"

    @property
    def data_dir(self) -> Path:
        """Under home, unless the service user cannot reach it (e.g. home inside /root)."""
        pointer = self.root / "data-location"
        if pointer.exists():
            return Path(pointer.read_text().strip())
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "postgres.pid"

    @property
    def password_file(self) -> Path:
        return self.root / "password"

    def dsn(self, database: str = DATABASE) -> str:
        password = quote(self.password_file.read_text().strip(), safe="")
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self.port}/{database}"

    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def running(self) -> bool:
        return self.pid() is not None

    def _as_user(self, user: str | None, argv: list[str]) -> list[str]:
        """setpriv execs in place, so the pid we record is the server's own."""
        if user is None:
            return argv
        return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]

    def _choose_data_dir(self, user: str | None) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        data = self.data_dir
        if user is None or data.exists() or _can_traverse(user, self.root):
            return data
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        data = Path("/var/lib/vigil") / f"postgres-{digest}"
        (self.root / "data-location").write_text(str(data))
        return data

    def _initdb(self, bindir: Path, user: str | None, data: Path) -> None:
        if (data / "PG_VERSION").exists():
            return
        data.mkdir(parents=True, exist_ok=True)
        if not self.password_file.exists():
            self.password_file.write_text(secrets.token_urlsafe(24))
            self.password_file.chmod(0o600)
        pwfile = data.parent / f".{data.name}.pw"
        pwfile.write_text(self.password_file.read_text())
        if user is not None:
            shutil.chown(data, user)
            shutil.chown(pwfile, user)
        pwfile.chmod(0o600)
        try:
            result = subprocess.run(
                self._as_user(user, [str(bindir / "initdb"), "-D", str(data), "-U", SUPERUSER,
                                     f"--pwfile={pwfile}", "--auth=scram-sha-256",
                                     "--encoding=UTF8", "--locale=C.UTF-8"]),
                capture_output=True, text=True,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise LaunchError(f"initdb failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")

    def start(self, timeout_s: float = 60.0) -> None:
        """Idempotent: a server that already runs is left alone."""
        if self.running():
            return
        if port_open("127.0.0.1", self.port):
            raise LaunchError(f"port {self.port} is taken by another process; "
                              "set VIGIL_PG_PORT or VIGIL_DATABASE_URL")
        bindir = find_bindir() or install_postgres()
        user = _service_user()
        data = self._choose_data_dir(user)
        self._initdb(bindir, user, data)
        argv = self._as_user(user, [
            str(bindir / "postgres"), "-D", str(data), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", "max_connections=200", "-c", "shared_buffers=256MB",
            "-c", "synchronous_commit=on", "-c", "log_min_messages=warning",
        ])
        if user is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
        spawn(argv, self.log_file, self.pid_file)
        wait_until(self._accepts_connections, timeout_s, "PostgreSQL", self.log_file,
                   alive=self.running)
        self._ensure_database()

    def _accepts_connections(self) -> bool:
        if not port_open("127.0.0.1", self.port):
            return False
        import psycopg

        try:
            with psycopg.connect(self.dsn("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def _ensure_database(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (DATABASE,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE)))

    def stop(self) -> None:
        """SIGINT is PostgreSQL's fast shutdown: it does not wait for clients to leave."""
        pid = self.pid()
        if pid is not None:
            terminate(pid, timeout_s=60.0, sig=signal.SIGINT)
        self.pid_file.unlink(missing_ok=True)
