"""Real tracking servers for tests: PostgreSQL and the MLflow server, each on loopback.

Every server runs in a process group of its own and is stopped, group and all, when its context
manager exits, so a failing test leaves nothing running. Both are slow to start (PostgreSQL about
1 s, the MLflow server about 20 s with one worker), so tests share them per module.

Not a test module: test modules load it by path (tests/ is not a package).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
PG_USER = "postgres"  # the OS user that owns the cluster; initdb refuses to run as root
MLFLOW_START_TIMEOUT_S = 180.0  # about 20 s alone; far more on two cores shared with training
STOP_TIMEOUT_S = 60.0  # MLflow's helper processes linger 10-25 s after SIGTERM


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(
    proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S
) -> None:
    """Signal the process group led by ``proc`` and wait until every member has exited.

    Members still alive after ``timeout_s`` are killed with SIGKILL. ``proc`` must have been
    started with ``start_new_session=True``.
    """
    pgid = proc.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # Reap the leader so that it does not keep the group alive as a zombie.
        if proc.poll() is not None and not _group_alive(pgid):
            return
        time.sleep(0.2)

    log.warning("process group %d outlived %.0f s; killing it", pgid, timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=10)


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen
) -> None:
    """Poll ``check()`` until it is true; fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before it was ready")
        time.sleep(0.5)
    raise TimeoutError(f"{what} was not ready within {timeout_s:.0f} s")


# --- PostgreSQL ------------------------------------------------------------------------------


def _pg_binary(name: str) -> str | None:
    # Debian keeps the server binaries out of PATH, under a versioned directory.
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def postgres_missing() -> str | None:
    """Why a PostgreSQL server cannot be started here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to run PostgreSQL as the postgres user"
    if _pg_binary("initdb") is None or _pg_binary("postgres") is None:
        return "PostgreSQL is not installed (apt-get install postgresql)"
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return f"no OS user {PG_USER!r} to own the database cluster"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "psycopg2 is not installed (pip install psycopg2-binary)"
    return None


def _pg_accepts(port: int) -> bool:
    import psycopg2

    try:
        psycopg2.connect(host=LOOPBACK, port=port, user=PG_USER, dbname="postgres").close()
    except psycopg2.OperationalError:
        return False
    return True


@contextlib.contextmanager
def postgres(database: str = "mlflow") -> Iterator[str]:
    """A throw-away PostgreSQL cluster on loopback with one empty database.

    Yields:
        The database's SQLAlchemy URI, ``postgresql+psycopg2://postgres@127.0.0.1:<port>/<db>``.
    """
    import psycopg2

    # pytest's tmp directories are private to root; the postgres user must own its directory.
    root = Path(tempfile.mkdtemp(prefix="curvlab-pg-"))
    data = root / "data"
    user = pwd.getpwnam(PG_USER)
    os.chown(root, user.pw_uid, user.pw_gid)
    proc = None
    try:
        subprocess.run(
            [_pg_binary("initdb"), "-D", str(data), "--auth=trust", "-U", PG_USER],
            user=PG_USER,
            cwd=root,
            check=True,
            capture_output=True,
            timeout=120,
        )

        port = free_port()
        options = ["-p", str(port), "-k", str(root), "-c", f"listen_addresses={LOOPBACK}"]
        with (root / "postgres.log").open("wb") as server_log:
            proc = subprocess.Popen(
                [_pg_binary("postgres"), "-D", str(data), *options],
                user=PG_USER,
                cwd=root,
                stdout=server_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: _pg_accepts(port), 60, "PostgreSQL", proc)

        # CREATE DATABASE cannot run inside a transaction.
        conn = psycopg2.connect(host=LOOPBACK, port=port, user=PG_USER, dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{database}"')
        conn.close()

        yield f"postgresql+psycopg2://{PG_USER}@{LOOPBACK}:{port}/{database}"
    finally:
        # SIGINT is PostgreSQL's "fast" shutdown: roll back sessions, then exit cleanly.
        if proc is not None:
            stop_group(proc, signal.SIGINT, timeout_s=30)
        shutil.rmtree(root, ignore_errors=True)


# --- MLflow server ---------------------------------------------------------------------------


def basic_auth_missing() -> str | None:
    """Why MLflow's basic-auth app cannot run here, or None when it can."""
    try:
        import flask_wtf  # noqa: F401
    except ImportError:
        return "MLflow's basic-auth app needs Flask-WTF (pip install 'mlflow[auth]')"
    return None


@dataclass
class MlflowServer:
    """A running MLflow tracking server.

    Attributes:
        uri: ``http://127.0.0.1:<port>``.
        log_path: The server's combined stdout and stderr.
        admin: ``(username, password)`` of the basic-auth admin, or None without auth.
        env: Extra environment the server was started with.
    """

    uri: str
    log_path: Path
    admin: tuple[str, str] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log, for failure messages."""
        return self.log_path.read_text(errors="replace")[-chars:]


def _healthy(uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=5) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def mlflow_server(
    backend_uri: str,
    workdir: Path,
    admin_password: str | None = None,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[MlflowServer]:
    """Start ``mlflow server`` on loopback with one worker; stop it and its helpers on exit.

    Args:
        backend_uri: Tracking store (sqlite or PostgreSQL SQLAlchemy URI).
        workdir: Holds the artifact store, the server log and, with auth, the users database.
        admin_password: When given, the server runs MLflow's basic-auth app with an ``admin``
            user holding this password; anonymous requests are then refused.
        extra_env: More environment for the server process.

    Yields:
        The running server.
    """
    port = free_port()
    uri = f"http://{LOOPBACK}:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(extra_env or {})
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(workdir / "artifacts"),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--workers",
        "1",
    ]

    admin = None
    if admin_password is not None:
        auth_ini = workdir / "basic_auth.ini"
        auth_ini.write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{workdir / 'basic_auth.db'}\n"
            "admin_username = admin\n"
        )
        env.update(
            MLFLOW_AUTH_CONFIG_PATH=str(auth_ini),
            MLFLOW_AUTH_ADMIN_PASSWORD=admin_password,
            MLFLOW_FLASK_SERVER_SECRET_KEY=os.urandom(16).hex(),
        )
        command += ["--app-name", "basic-auth"]
        admin = ("admin", admin_password)

    log_path = workdir / "mlflow-server.log"
    with log_path.open("wb") as server_log:
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            env=env,
            stdout=server_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = MlflowServer(uri=uri, log_path=log_path, admin=admin, env=env)
    try:
        started = time.monotonic()
        try:
            wait_until(lambda: _healthy(uri), MLFLOW_START_TIMEOUT_S, "mlflow server", proc)
        except (RuntimeError, TimeoutError) as err:
            raise RuntimeError(f"{err}\n{server.log_tail()}") from err
        log.info("mlflow server healthy at %s after %.1f s", uri, time.monotonic() - started)
        yield server
    finally:
        stop_group(proc)
