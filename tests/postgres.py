"""A private PostgreSQL cluster for the tests: Debian's server binaries, ``initdb`` into a
temporary directory (as the ``postgres`` user when the tests run as root, since PostgreSQL
refuses to run as root), a free port on 127.0.0.1, the unix socket inside the directory,
password authentication only, and a role and database for ocikit.

The conftest fixture ``postgres`` starts one per session (skipping, or failing under
``OCIKIT_REQUIRE_ALL=1``, without the binaries); :meth:`PostgresServer.database` hands each
test a fresh database, and :meth:`PostgresServer.restart` restarts the server under running
clients (replicas must ride it out).
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from conftest import free_port

ROLE = "ocikit"


def postgres_bin() -> Path | None:
    """Debian's server binaries (``initdb``, ``pg_ctl``), newest version first."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(found[0]).parent if found else None


@dataclass
class PostgresServer:
    bin: Path
    directory: Path
    port: int
    password: str = field(default_factory=lambda: secrets.token_hex(12))
    admin_password: str = field(default_factory=lambda: secrets.token_hex(12))
    _databases: int = 0

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "server.log"

    def url(self, database: str = ROLE, *, password: str | None = None) -> str:
        secret = self.password if password is None else password
        return f"postgresql://{ROLE}:{secret}@127.0.0.1:{self.port}/{database}"

    def _as_owner(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def initialise(self) -> None:
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        password_file = self.directory / "pw"
        password_file.write_text(self.admin_password + "\n")
        if os.geteuid() == 0:
            os.chown(password_file, pwd.getpwnam("postgres").pw_uid, -1)
        self._as_owner(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            f"--pwfile={password_file}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        )
        password_file.unlink()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_owner(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"
        )

    def stop(self) -> None:
        self._as_owner(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        """Stop and start again on the same port: every client connection is cut."""
        self.stop()
        self.start()

    def admin(self, *statements: str) -> None:
        """Run statements as the superuser (``psql`` over TCP with the admin password)."""
        for statement in statements:
            subprocess.run(
                [
                    "psql",
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-c",
                    statement,
                ],
                check=True,
                capture_output=True,
                timeout=60,
                env={**os.environ, "PGPASSWORD": self.admin_password},
            )

    def database(self) -> str:
        """A fresh, empty database owned by the ocikit role; its URL (with the password)."""
        self._databases += 1
        name = f"ocikit_{os.getpid()}_{self._databases}"
        self.admin(f"CREATE DATABASE {name} OWNER {ROLE} STRATEGY FILE_COPY")
        return self.url(name)


def start_postgres() -> PostgresServer | None:
    """A running cluster with the ocikit role and database, or None without the binaries."""
    binaries = postgres_bin()
    if binaries is None or shutil.which("psql") is None:
        return None
    # As root the server runs as the postgres user, who must reach the directory: not under a
    # private $TMPDIR.
    directory = Path(tempfile.mkdtemp(prefix="ocikit-pg-", dir="/tmp" if os.geteuid() == 0 else None))
    server = PostgresServer(binaries, directory, free_port())
    server.initialise()
    server.start()
    server.admin(
        f"CREATE ROLE {ROLE} LOGIN PASSWORD '{server.password}'",
        f"CREATE DATABASE {ROLE} OWNER {ROLE}",
    )
    return server


def stop_postgres(server: PostgresServer) -> None:
    try:
        server.stop()
    finally:
        shutil.rmtree(server.directory, ignore_errors=True)
