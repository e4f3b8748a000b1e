"""A private PostgreSQL cluster for when no database URL is configured.

It lives in one directory, listens on a Unix socket inside it and on no TCP
address, trusts local connections (the directory is mode 0700), and is
stopped by whoever started it. ``initdb`` refuses to run as root, so as root
the cluster runs as an unprivileged system user (``postgres`` by default).
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

SUPERUSER = "gateway"
DATABASE = "gateway"


class EmbeddedPostgresError(Exception):
    """The cluster cannot be created or started; the message says what to do."""


def find_binaries() -> Path:
    """The directory holding ``initdb`` and ``pg_ctl``: ``$PATH`` first, then the
    newest ``/usr/lib/postgresql/*/bin``."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0,
    )
    for directory in reversed(candidates):
        if (Path(directory) / "initdb").exists() and (Path(directory) / "pg_ctl").exists():
            return Path(directory)
    raise EmbeddedPostgresError(
        "no PostgreSQL server binaries (initdb, pg_ctl) found: install them "
        "(Debian/Ubuntu: apt-get install -y postgresql) or set database.url"
    )


class EmbeddedPostgres:
    """Create-if-missing, start and stop one cluster. Each call blocks for the
    subprocess (initdb ~1-2 s once, start/stop ~0.2-1 s): run it off the loop."""

    def __init__(
        self,
        data_dir: Path,
        run_as: str = "postgres",
        extra_options: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.bin_dir = find_binaries()
        self.extra_options = extra_options
        self._user: pwd.struct_passwd | None = None
        self._we_started = False
        if os.geteuid() == 0:
            try:
                self._user = pwd.getpwnam(run_as)
            except KeyError:
                raise EmbeddedPostgresError(
                    f"running as root, and PostgreSQL refuses to: create the user {run_as!r} "
                    "(useradd --system postgres), run as another user, or set database.url"
                ) from None

    @property
    def socket_dir(self) -> Path:
        return self.data_dir

    @property
    def dsn(self) -> str:
        return f"postgresql://{SUPERUSER}@/{DATABASE}?host={self.socket_dir}"

    def start(self) -> str:
        """Initialise the cluster if needed, start it unless already running, and
        return its DSN. A cluster already running (another gateway's, or one left
        by a crash) is used but not stopped by :meth:`stop`."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        if self._running():
            # Another gateway (or one that crashed) runs it: use it, never stop it.
            log.info("embedded postgres already running in %s: using it, leaving it running", self.data_dir)
        else:
            self._start_server()
            self._we_started = True
        self._ensure_database()
        return self.dsn

    def stop(self) -> None:
        """Fast shutdown of a cluster this object started (active sessions are
        disconnected); waits until it is down. A cluster it found running is left."""
        if not self._we_started:
            return
        self._pg_ctl("stop", "-m", "fast", "-w", check=False)
        self._we_started = False

    def stop_server(self) -> None:
        """Stop the server but remember it as ours (fault-injection helper)."""
        self._pg_ctl("stop", "-m", "fast", "-w")

    def start_server(self) -> None:
        self._start_server()

    # -- internals -----------------------------------------------------------

    def _initdb(self) -> None:
        self._check_reachable()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._own(self.data_dir)
        os.chmod(self.data_dir, 0o700)
        log.info("creating embedded postgres cluster in %s", self.data_dir)
        self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
                "--no-instructions",
            ]
        )

    def _start_server(self) -> None:
        options = [
            "-c listen_addresses=''",
            f"-c unix_socket_directories='{self.socket_dir}'",
            "-c unix_socket_permissions=0700",
            *self.extra_options,
        ]
        log_file = str(self.data_dir / "server.log")
        self._pg_ctl("start", "-w", "-t", "60", "-l", log_file, "-o", " ".join(options))

    def _running(self) -> bool:
        return self._pg_ctl("status", check=False).returncode == 0

    def _ensure_database(self) -> None:
        exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")
        if exists.stdout.strip() != "1":
            self._psql(f"CREATE DATABASE {DATABASE}")

    def _psql(self, sql: str) -> subprocess.CompletedProcess[str]:
        socket = str(self.socket_dir)
        return self._run(
            [str(self.bin_dir / "psql"), "-h", socket, "-U", SUPERUSER, "-d", "postgres", "-tAc", sql]
        )

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.bin_dir / "pg_ctl"), *args, "-D", str(self.data_dir)], check=check)

    def _check_reachable(self) -> None:
        """As root, the cluster's user must be able to enter every parent directory."""
        if self._user is None:
            return
        for parent in reversed(self.data_dir.parents):
            if not parent.exists():
                break
            st = parent.stat()
            if st.st_uid == self._user.pw_uid:
                bit = 0o100
            elif st.st_gid == self._user.pw_gid:
                bit = 0o010
            else:
                bit = 0o001
            if not st.st_mode & bit:
                raise EmbeddedPostgresError(
                    f"user {self._user.pw_name!r} cannot enter {parent}: "
                    f"chmod o+x it, or set database.embedded_dir elsewhere"
                )

    def _own(self, path: Path) -> None:
        if self._user is not None:
            os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            user=self._user.pw_uid if self._user else None,
            group=self._user.pw_gid if self._user else None,
            extra_groups=[] if self._user else None,
            cwd="/",
            env={**os.environ, "LC_ALL": "C.UTF-8"},
            check=False,
        )
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise EmbeddedPostgresError(
                f"{Path(argv[0]).name} failed: {detail[-1] if detail else 'exit ' + str(result.returncode)}"
                f" (see {self.data_dir / 'server.log'})"
            )
        return result
