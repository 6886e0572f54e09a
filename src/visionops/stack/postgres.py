"""A PostgreSQL server of the stack's own: ``initdb`` into ``.stack/pg``, listening on 127.0.0.1
and a unix socket in ``.stack/run``, password (SCRAM) auth, databases ``mlflow`` and ``prefect``.

The server is Debian's ``postgresql`` package (``apt-get install postgresql``; ``make stack-deps``
and ``.ci/run`` install it): the distribution's build, patched by its security updates, with the
matching ``pg_dump`` for backups. PostgreSQL refuses to run as root, so when ``stack up`` runs as
root the server runs as the ``postgres`` user the package creates, and owns ``.stack/pg``.
"""

from __future__ import annotations

import os
import pwd
import re
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from visionops.errors import VisionOpsError
from visionops.stack.procs import HOST, is_ours, last_line, spawn
from visionops.stack.state import Service, StackPaths

SUPERUSER = "visionops"
DATABASES = ("mlflow", "prefect")
INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, postgres) not found. Fix, as root on Debian/Ubuntu: "
    "apt-get install -y postgresql   (or: make stack-deps)"
)


@dataclass(frozen=True)
class PgBinaries:
    bindir: Path

    def __getitem__(self, name: str) -> str:
        return str(self.bindir / name)


def find_binaries(debian: Path = Path("/usr/lib/postgresql")) -> PgBinaries:
    """Debian keeps the server out of PATH, in /usr/lib/postgresql/<major>/bin: the newest wins;
    else ``initdb`` on PATH (other distributions, a source build)."""
    if debian.is_dir():
        majors = sorted(
            (p for p in debian.iterdir() if (p / "bin" / "initdb").exists()),
            key=lambda p: int(re.sub(r"\D", "", p.name) or 0),
        )
        if majors:
            return PgBinaries(majors[-1] / "bin")
    found = shutil.which("initdb")
    if found and shutil.which("postgres"):
        return PgBinaries(Path(found).parent)
    raise VisionOpsError(INSTALL_HINT)


def server_user() -> str | None:
    """None: run as ourselves. As root: the ``postgres`` system user (PostgreSQL refuses root)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise VisionOpsError(
            "running as root and there is no 'postgres' user for the database server. Fix: "
            "apt-get install -y postgresql (creates it), or run `visionops stack up` as a "
            "normal user"
        ) from None
    return "postgres"


def _own(path: Path, user: str | None) -> None:
    if user:
        entry = pwd.getpwnam(user)
        for p in [path, *path.rglob("*")]:
            os.chown(p, entry.pw_uid, entry.pw_gid)


def password(paths: StackPaths) -> str:
    """The database password, generated once into ``.stack/pg-password`` (mode 0600)."""
    if paths.secret_file.exists():
        return paths.secret_file.read_text(encoding="utf-8").strip()
    paths.root.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(18)
    fd = os.open(paths.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def initdb(paths: StackPaths, bins: PgBinaries, user: str | None) -> bool:
    """Create the cluster once; False when ``.stack/pg`` already holds one."""
    if (paths.pg_data / "PG_VERSION").exists():
        return False
    paths.pg_data.mkdir(parents=True, exist_ok=True)
    paths.pg_socket.mkdir(parents=True, exist_ok=True)
    os.chmod(paths.pg_data, 0o700)
    pwfile = paths.pg_socket / "initdb-pw"
    pwfile.write_text(password(paths) + "\n", encoding="utf-8")
    os.chmod(pwfile, 0o600)
    _own(paths.pg_data, user)
    _own(paths.pg_socket, user)
    try:
        proc = subprocess.run(
            [bins["initdb"], "-D", str(paths.pg_data), "-U", SUPERUSER, "--auth=scram-sha-256",
             f"--pwfile={pwfile}", "-E", "UTF8", "--locale=C", "--no-sync"],
            capture_output=True, text=True, user=user, cwd=paths.root,
        )  # fmt: skip
    finally:
        pwfile.unlink(missing_ok=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        hint = (
            f" (user {user} must be able to enter every parent folder of {paths.root})"
            if user and "ermission denied" in proc.stderr
            else ""
        )
        shutil.rmtree(paths.pg_data, ignore_errors=True)
        raise VisionOpsError(f"initdb failed: {lines[-1] if lines else proc.returncode}{hint}")
    return True


def start(paths: StackPaths, bins: PgBinaries, port: int, user: str | None, env: dict) -> Service:
    """``postgres -D .stack/pg`` on 127.0.0.1:port; waits until it accepts connections."""
    paths.pg_socket.mkdir(parents=True, exist_ok=True)
    _own(paths.pg_socket, user)
    paths.logs.mkdir(parents=True, exist_ok=True)
    cmd = [bins["postgres"], "-D", str(paths.pg_data), "-p", str(port),
           "-k", str(paths.pg_socket), "-c", f"listen_addresses={HOST}",
           "-c", "max_connections=100", "-c", "shared_buffers=32MB"]  # fmt: skip
    log = paths.log("postgres")
    if user:  # the log file is opened by us (root), the server only writes to the fd
        log.touch()
    service = spawn("postgres", cmd, log, env, cwd=paths.root, user=user, port=port)
    service.url = f"postgresql://{SUPERUSER}@{HOST}:{port}"
    wait_ready(service, port, paths, timeout_s=60)
    return service


def url(paths: StackPaths, port: int, database: str, driver: str = "postgresql") -> str:
    return f"{driver}://{SUPERUSER}:{password(paths)}@{HOST}:{port}/{database}"


def wait_ready(service: Service, port: int, paths: StackPaths, timeout_s: float) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_ours(service):
            raise VisionOpsError(f"postgres exited while starting: {last_line(service.log)}")
        try:
            psycopg2.connect(url(paths, port, "postgres"), connect_timeout=2).close()
            return
        except psycopg2.OperationalError:
            time.sleep(0.3)
    raise VisionOpsError(f"postgres did not accept connections within {timeout_s:.0f} s")


def create_databases(paths: StackPaths, port: int) -> None:
    import psycopg2

    conn = psycopg2.connect(url(paths, port, "postgres"))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT datname FROM pg_database")
            have = {row[0] for row in cur.fetchall()}
            for name in DATABASES:
                if name not in have:
                    cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
