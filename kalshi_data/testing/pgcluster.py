"""Temporary PostgreSQL clusters: init, start, stop, kill -9, restart, standby, promote.

Used by the test harness, the benchmarks and ``kalshi-data demo``. Every cluster started here is
registered so that :func:`stop_all` (called by the test session's finalizer and at interpreter
exit) leaves no server behind, even when a test fails.

When the caller is root, the server runs as the ``postgres`` user (PostgreSQL refuses to run as
root), and the data directory is handed to that user.

TimescaleDB: :func:`timescaledb_missing` says whether the extension is installed into the server
found here (and why not); ``PgCluster.init(timescaledb=True)`` writes the preload it needs
(DESIGN.md §3a). A clone of such a cluster keeps its ``postgresql.conf``, hence the preload.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import psycopg

from kalshi_data.errors import KalshiDataError

DEFAULT_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "timezone": "'UTC'",
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "hot_standby": "on",
    "max_connections": "200",
    "shared_buffers": "64MB",
    # A dead client must not hold locks (and the leader lease) for the kernel's 15 minutes.
    "tcp_keepalives_idle": "5",
    "tcp_keepalives_interval": "2",
    "tcp_keepalives_count": "3",
    "client_connection_check_interval": "1000",
    "idle_in_transaction_session_timeout": "60000",
    "logging_collector": "off",
    "log_min_messages": "warning",
}

#: What a TimescaleDB gatherer server needs on top of DEFAULT_SETTINGS: the preload (without it
#: CREATE EXTENSION is FATAL), no telemetry (loopback only), and room for its background workers
#: (the scheduler per database plus policy jobs) next to the parallel-query workers.
TIMESCALEDB_SETTINGS: dict[str, str] = {
    "shared_preload_libraries": "'timescaledb'",
    "timescaledb.telemetry_level": "off",
    "timescaledb.max_background_workers": "8",
    "max_worker_processes": "16",
}

_REGISTRY: dict[Path, PgCluster] = {}


class PgClusterError(KalshiDataError, RuntimeError):
    """A cluster operation (initdb, start, stop, backup, promote) failed."""


def find_bindir() -> Path:
    """Return the newest PostgreSQL server bin directory installed from Debian's packages."""
    env = os.environ.get("KALSHI_DATA_PG_BINDIR")
    if env:
        return Path(env)
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise PgClusterError(
        "PostgreSQL server binaries not found: run `make pg` or apt-get install postgresql"
    )


def _pg_dirs(bindir: Path) -> tuple[Path, Path]:
    """(sharedir, pkglibdir) of the server in ``bindir``: from its pg_config, else the Debian
    layout (``/usr/lib/postgresql/N/{bin,lib}``, ``/usr/share/postgresql/N``)."""
    pg_config = bindir / "pg_config"
    if pg_config.exists():
        proc = subprocess.run(
            [str(pg_config), "--sharedir", "--pkglibdir"],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = proc.stdout.split()
        if proc.returncode == 0 and len(lines) == 2:
            return Path(lines[0]), Path(lines[1])
    major = bindir.parent.name
    return Path("/usr/share/postgresql") / major, bindir.parent / "lib"


def timescaledb_missing(bindir: Path | None = None) -> str | None:
    """None when the timescaledb extension is installed into the server in ``bindir`` (default:
    :func:`find_bindir`); otherwise a sentence saying what is missing, for skip messages."""
    try:
        bindir = bindir or find_bindir()
    except PgClusterError as exc:
        return str(exc)
    sharedir, libdir = _pg_dirs(bindir)
    control = sharedir / "extension" / "timescaledb.control"
    if not control.exists():
        return (
            f"the timescaledb extension is not installed into the PostgreSQL server in {bindir} "
            f"(no {control}); install it from Timescale's apt repository (docs/timescaledb.md)"
        )
    if not (libdir / "timescaledb.so").exists():
        return f"{control} exists but {libdir / 'timescaledb.so'} does not"
    return None


def timescaledb_installed(bindir: Path | None = None) -> bool:
    """True when the timescaledb extension is installed into the server in ``bindir``."""
    return timescaledb_missing(bindir) is None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> list[str]:
    """Prefix that runs a command as ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return []
    return ["runuser", "-u", "postgres", "--"]


def _chown_for_server(path: Path) -> None:
    if os.geteuid() != 0:
        return
    pw = pwd.getpwnam("postgres")
    os.chown(path, pw.pw_uid, pw.pw_gid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        os.chown(root, pw.pw_uid, pw.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), pw.pw_uid, pw.pw_gid, follow_symlinks=False)


class PgCluster:
    """One PostgreSQL server with its own data directory and port.

    Args:
        base: folder holding this cluster's files (``data/``, ``socket/``, ``server.log``).
        port: TCP port on 127.0.0.1 (a free one when omitted).
        password: the superuser's password (generated when omitted; never logged).
    """

    def __init__(self, base: Path, *, port: int | None = None, password: str | None = None) -> None:
        self.base = Path(base).resolve()
        self.datadir = self.base / "data"
        self.sockdir = self.base / "socket"
        self.logfile = self.base / "server.log"
        self.port = port or free_port()
        self.superuser = "postgres"
        self.superuser_password = password or secrets.token_urlsafe(18)
        self.bindir = find_bindir()

    # ----------------------------------------------------------------- lifecycle
    def _cmd(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*_run_as(), str(self.bindir / tool), *args]
        env = dict(os.environ, PGPASSWORD=self.superuser_password)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if check and proc.returncode != 0:
            raise PgClusterError(
                f"{tool} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}"
            )
        return proc

    def _prepare_base(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(exist_ok=True)
        _chown_for_server(self.base)
        if os.geteuid() == 0:
            # The server user must be able to reach the folder; its parents may be root-only.
            p = self.base
            while p != p.parent:
                mode = p.stat().st_mode
                if not mode & 0o001:
                    os.chmod(p, mode | 0o001)
                p = p.parent

    def init(
        self, settings: Mapping[str, str] | None = None, *, timescaledb: bool = False
    ) -> PgCluster:
        """Run initdb and write the server settings; returns self.

        With ``timescaledb``, the server preloads the extension (:data:`TIMESCALEDB_SETTINGS`);
        raises :class:`PgClusterError` naming what is missing when it is not installed.
        """
        if timescaledb:
            missing = timescaledb_missing(self.bindir)
            if missing is not None:
                raise PgClusterError(missing)
        self._prepare_base()
        pwfile = self.base / "pw.tmp"
        pwfile.write_text(self.superuser_password)
        _chown_for_server(pwfile)
        os.chmod(pwfile, 0o600)
        try:
            self._cmd(
                "initdb",
                "-D",
                str(self.datadir),
                "-U",
                self.superuser,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        conf = dict(DEFAULT_SETTINGS)
        conf["port"] = str(self.port)
        conf["unix_socket_directories"] = f"'{self.sockdir}'"
        if timescaledb:
            conf.update(TIMESCALEDB_SETTINGS)
        conf.update(settings or {})
        self._write_conf(conf)
        return self

    def clone_from(
        self, template: PgCluster, settings: Mapping[str, str] | None = None
    ) -> PgCluster:
        """Copy a stopped, initialised template's data directory instead of running initdb.

        initdb costs about a second; a copy costs a few milliseconds, which keeps a test suite
        that starts dozens of clusters fast. The clone keeps the template's superuser password
        and its system identifier: use :meth:`init` where distinct identities matter (a rebuilt
        gatherer cluster).
        """
        self._prepare_base()
        shutil.copytree(template.datadir, self.datadir, symlinks=True)
        self.superuser_password = template.superuser_password
        _chown_for_server(self.base)
        conf = {"port": str(self.port), "unix_socket_directories": f"'{self.sockdir}'"}
        conf.update(settings or {})
        self._write_conf(conf)
        return self

    def _write_conf(self, conf: Mapping[str, str]) -> None:
        lines = [f"{k} = {v}" for k, v in conf.items()]
        path = self.datadir / "postgresql.conf"
        with path.open("a") as f:
            f.write("\n# kalshi-data harness\n" + "\n".join(lines) + "\n")

    def set(self, **settings: str) -> None:
        """Append settings to postgresql.conf (takes effect at the next start or reload)."""
        self._write_conf(settings)

    def start(self, timeout_s: int = 60) -> PgCluster:
        """Start the server and wait until it accepts connections; returns self."""
        _REGISTRY[self.base] = self
        try:
            self._cmd(
                "pg_ctl",
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                str(timeout_s),
                "start",
            )
        except PgClusterError as exc:
            try:
                tail = "\n".join(self.logfile.read_text(errors="replace").splitlines()[-15:])
            except OSError:
                tail = "(no server log)"
            raise PgClusterError(f"{exc}\nserver log:\n{tail}") from None
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``smart``, ``fast`` or ``immediate``); no error when not running."""
        if not self.is_running():
            return
        self._cmd(
            "pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop", check=False
        )

    def restart(self) -> None:
        """Stop (fast) and start again."""
        self.stop()
        self.start()

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, from ``postmaster.pid``, or None."""
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (FileNotFoundError, ValueError, PermissionError):
            return None

    def is_running(self) -> bool:
        """True when the postmaster process exists."""
        pid = self.pid
        if pid is None:
            return False
        return _alive(pid)

    def kill9(self) -> None:
        """SIGKILL the postmaster and every backend: what a host crash looks like to clients."""
        pid = self.pid
        if pid is None:
            return
        # Freeze the postmaster first: it forks backends and (with TimescaleDB) background
        # workers all the time, and a child forked after the list below was taken would survive,
        # holding the shared memory that the next start then refuses to reuse.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)
        victims = [pid, *_children(pid)]
        for p in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in victims):
            time.sleep(0.02)
        # This machine's PID 1 may not reap orphans: a killed postmaster can linger as a zombie
        # whose pid still "exists", and the next start would refuse because of postmaster.pid.
        # After a real crash the pid is gone, so removing the stale lock file is the same state.
        if not _alive(pid):
            with contextlib.suppress(FileNotFoundError):
                (self.datadir / "postmaster.pid").unlink()
            for stale in self.sockdir.glob(".s.PGSQL.*"):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()

    def destroy(self) -> None:
        """Stop immediately and delete every file of this cluster."""
        self.stop("immediate")
        if self.is_running():
            self.kill9()
        _REGISTRY.pop(self.base, None)
        shutil.rmtree(self.base, ignore_errors=True)

    def setting(self, name: str) -> str:
        """The running server's value of one setting (``SHOW``)."""
        return str(self.execute(f"SHOW {name}")[0][0])

    @property
    def preloads_timescaledb(self) -> bool:
        """True when the running server has timescaledb in ``shared_preload_libraries``."""
        libs = self.setting("shared_preload_libraries")
        return "timescaledb" in [x.strip().strip('"') for x in libs.split(",")]

    # ----------------------------------------------------------------- access
    def dsn(
        self, dbname: str = "postgres", user: str | None = None, password: str | None = None
    ) -> str:
        """A libpq URI for this server over TCP on 127.0.0.1."""
        user = user or self.superuser
        if password is None and user == self.superuser:
            password = self.superuser_password
        auth = f"{user}:{password}@" if password else f"{user}@"
        return f"postgresql://{auth}127.0.0.1:{self.port}/{dbname}"

    def execute(self, sql: str, dbname: str = "postgres") -> list[tuple[object, ...]]:
        """Run SQL as the superuser (autocommit) and return the rows of the last statement."""
        with psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql.encode())
            return list(cur.fetchall()) if cur.description else []

    def create_database(self, name: str) -> str:
        """Create a database; return its superuser DSN."""
        self.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    @property
    def system_identifier(self) -> int:
        """The cluster's system identifier (changes when a cluster is rebuilt)."""
        rows = self.execute("SELECT system_identifier FROM pg_control_system()")
        return int(str(rows[0][0]))

    # ----------------------------------------------------------------- replication
    def create_standby(
        self, base: Path, *, synchronous: bool = True, name: str = "standby1"
    ) -> PgCluster:
        """Build a streaming-replication standby of this (running) primary and start it.

        With ``synchronous``, the primary waits for the standby on every commit
        (``synchronous_standby_names``), so a promoted standby has every committed row: the
        Multi-AZ guarantee the deduplicator's failover test relies on.
        """
        standby = PgCluster(base, password=self.superuser_password)
        standby._prepare_base()
        self._cmd(
            "pg_basebackup",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-D",
            str(standby.datadir),
            "-R",
            "-X",
            "stream",
            "--checkpoint=fast",
            "--no-sync",
        )
        conninfo = (
            f"host=127.0.0.1 port={self.port} user={self.superuser} "
            f"password={self.superuser_password} application_name={name}"
        )
        standby.set(port=str(standby.port), unix_socket_directories=f"'{standby.sockdir}'")
        # pg_basebackup -R wrote primary_conninfo into postgresql.auto.conf, which overrides
        # postgresql.conf: name the standby there so synchronous_standby_names can match it.
        with (standby.datadir / "postgresql.auto.conf").open("a") as f:
            f.write(f"primary_conninfo = '{conninfo}'\n")
        standby.start()
        if synchronous:
            self.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{name}'")
            self.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                rows = self.execute(
                    f"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{name}'"
                )
                if rows and rows[0][0] == "sync":
                    break
                time.sleep(0.05)
            else:
                raise PgClusterError("standby did not become synchronous within 30 s")
        return standby

    def promote(self, timeout_s: float = 120.0) -> None:
        """Promote this standby to primary and wait until it accepts writes.

        ``pg_ctl promote`` only signals the server; on a loaded machine its own wait can time
        out while the promotion still completes. So its exit status is not the verdict: the
        server leaving recovery is, polled (through refused or slow connections) until
        ``timeout_s``.
        """
        proc = self._cmd(
            "pg_ctl", "-D", str(self.datadir), "-w", "-t", "60", "promote", check=False
        )
        deadline = time.monotonic() + timeout_s
        last: str = proc.stderr.strip()[-500:]
        while time.monotonic() < deadline:
            try:
                if self.execute("SELECT pg_is_in_recovery()")[0][0] is False:
                    return
            except psycopg.OperationalError as exc:
                last = str(exc).strip()[-500:]
            time.sleep(0.05)
        raise PgClusterError(
            f"standby still in recovery {timeout_s:.0f} s after promote"
            f" (pg_ctl exit {proc.returncode}; last: {last})"
        )


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (PostgreSQL backends are direct children of the postmaster)."""
    out: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces, so split after the last ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def stop_all() -> None:
    """Stop and delete every cluster this process started (test finalizer, atexit)."""
    for cluster in list(_REGISTRY.values()):
        with contextlib.suppress(Exception):
            cluster.destroy()


@contextlib.contextmanager
def temporary_cluster(
    base: Path, settings: Mapping[str, str] | None = None, *, timescaledb: bool = False
) -> Iterator[PgCluster]:
    """Init and start a cluster under ``base`` (preloading TimescaleDB when asked); destroy it
    on exit, even on error."""
    cluster = PgCluster(base)
    try:
        cluster.init(settings, timescaledb=timescaledb)
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


atexit.register(stop_all)
