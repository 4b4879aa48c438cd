"""A local PostgreSQL server for tests, benchmarks and ``make serve-replicas``: Debian's ``postgresql``
binaries, a cluster in a folder of ours, listening on 127.0.0.1 only, with a generated password.

PostgreSQL refuses to run as root, so as root (CI) the cluster belongs to the ``postgres`` user and
its commands run as that user; that user must be able to reach the folder, so a folder inside a
directory only root may enter (a home, a ``mktemp -d``) is kept in ``postgres``'s home and linked.

The server is our own child (``postgres`` itself, not ``pg_ctl``, which detaches it into a session of
its own where no signal of ours reaches it): ``stop()`` ends it with a fast shutdown, and if the
process that started it dies first, the parent-death signal does (``embedded/lifecycle.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from embedded.lifecycle import spawn_server, stop_on_signals
from embedded.triton_server import free_port

USER = "sd"
DATABASE = "sd_img2img"


class PostgresError(RuntimeError):
    pass


def bin_dir() -> Path:
    """The newest Debian cluster binaries (``/usr/lib/postgresql/N/bin``), else those on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).resolve().parent
    raise PostgresError("PostgreSQL is not installed: `make postgres` installs Debian's postgresql")


@dataclass
class EmbeddedPostgres:
    data_dir: Path  # the cluster (created on first start, kept across starts)
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    _as_postgres: bool = field(default=False, init=False)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._as_postgres = os.geteuid() == 0

    @property
    def password(self) -> str:
        return (self.cluster / "sd_password").read_text().strip()

    @property
    def url(self) -> str:
        return self.database_url(DATABASE)

    def database_url(self, name: str) -> str:
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{name}"

    @property
    def cluster(self) -> Path:
        return self.data_dir.resolve()

    def start(self, timeout_s: float = 60) -> EmbeddedPostgres:
        self._place()
        if not (self.cluster / "PG_VERSION").exists():
            self._init()
        self._refuse_if_running()
        log = self.log_path or self.cluster / "server.log"
        command = [
            str(bin_dir() / "postgres"), "-D", str(self.cluster), "-p", str(self.port), "-k", str(self.cluster),
            "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=200",
        ]  # fmt: skip
        user = {"user": "postgres", "group": "postgres", "extra_groups": []} if self._as_postgres else {}
        with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
            # SIGINT is PostgreSQL's fast shutdown: sessions are ended, nothing is left to recover.
            self.process = spawn_server(command, die_signal=signal.SIGINT, stdout=out, stderr=out, cwd="/", **user)
        try:
            self._wait_ready(timeout_s, log)
            self.create_database(DATABASE)
        except BaseException:
            self.stop()
            raise
        return self

    def _refuse_if_running(self) -> None:
        """A server of an earlier run still on this cluster (its pid file names a live process) is reported."""
        pid_file = self.cluster / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return  # none, or stale: PostgreSQL removes a stale pid file itself
        raise PostgresError(
            f"a PostgreSQL (pid {pid}) already runs on {self.data_dir}, perhaps left by an earlier run: "
            f"stop it with `pg_ctl stop -D {self.cluster}` (as the postgres user when root)"
        )

    def _wait_ready(self, timeout_s: float, log: Path) -> None:
        assert self.process is not None
        ready = [str(bin_dir() / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                raise PostgresError(f"postgres exited with {self.process.returncode} before it was ready:\n{tail}")
            if subprocess.run(ready, capture_output=True, check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise PostgresError(f"PostgreSQL not ready after {timeout_s:.0f} s (log: {log})")

    def stop(self, timeout_s: float = 30) -> None:
        """Our server: a fast shutdown, waited for (then SIGQUIT, then SIGKILL). One started elsewhere on the
        cluster (``pg_ctl``): ``pg_ctl stop``."""
        if self.process is None:
            if (self.cluster / "postmaster.pid").exists():
                self._run("pg_ctl", "stop", "--wait", "-m", "fast", "-D", str(self.cluster), check=False)
            return
        for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
            if self.process.poll() is not None:
                break
            self.process.send_signal(signum)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                continue
        self.process.wait()
        self.process = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.cluster, ignore_errors=True)
        if self.data_dir.is_symlink():
            self.data_dir.unlink()

    def _place(self) -> None:
        """As root, the cluster must be somewhere ``postgres`` can reach: else keep it in its home."""
        if not self._as_postgres or self.data_dir.is_symlink():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        probe = ["runuser", "-u", "postgres", "--", "/usr/bin/test", "-x", str(self.data_dir.resolve())]
        reachable = subprocess.run(probe)  # noqa: S607 - runuser from PATH, as the platform notes run it
        if reachable.returncode != 0:
            digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:12]
            home = Path("/var/lib/postgresql") / f"sd-img2img-{digest}"
            home.mkdir(parents=True, exist_ok=True)
            self.data_dir.rmdir()
            self.data_dir.symlink_to(home, target_is_directory=True)
        shutil.chown(self.cluster, "postgres", "postgres")
        self.cluster.chmod(0o700)

    def _init(self) -> None:
        self.cluster.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.cluster, "postgres", "postgres")
        password_file = self.cluster.parent / f".{self.cluster.name}.pw"
        password_file.write_text(secrets.token_urlsafe(24) + "\n")
        try:
            if self._as_postgres:
                shutil.chown(password_file, "postgres", "postgres")
            self._run(
                "initdb", "-D", str(self.cluster), f"--username={USER}", f"--pwfile={password_file}",
                "--auth-local=peer", "--auth-host=scram-sha-256", "--encoding=UTF8", "--no-instructions",
            )  # fmt: skip
            (self.cluster / "sd_password").write_text(password_file.read_text())
            (self.cluster / "sd_password").chmod(0o600)
        finally:
            password_file.unlink()

    def create_database(self, name: str) -> str:
        """Create ``name`` unless it exists; its URL."""
        env = {**os.environ, "PGPASSWORD": self.password}
        server = ["-h", "127.0.0.1", "-p", str(self.port), "-U", USER]
        exists = subprocess.run(
            [str(bin_dir() / "psql"), *server, "-d", "postgres", "-tAc",
             f"SELECT 1 FROM pg_database WHERE datname = '{name}'"],  # noqa: S608 - our own test database names
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        if exists.stdout.strip() != "1":
            subprocess.run([str(bin_dir() / "createdb"), *server, name], env=env, check=True, capture_output=True)
        return self.database_url(name)

    def _run(self, tool: str, *args: str, check: bool = True) -> None:
        command = [str(bin_dir() / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]  # noqa: S607
        done = subprocess.run(command, capture_output=True, text=True, cwd="/")
        if check and done.returncode != 0:
            raise PostgresError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A local PostgreSQL on 127.0.0.1 (Ctrl-C stops it).")
    parser.add_argument("--data-dir", default=".pgdata")
    parser.add_argument("--port", type=int, default=55432)
    args = parser.parse_args(argv)
    stop_on_signals()
    server = EmbeddedPostgres(Path(args.data_dir), args.port)
    try:
        server.start()
        print(f"PostgreSQL ready: SD_DATABASE_URL={server.url}", flush=True)
        assert server.process is not None
        return server.process.wait()  # until a signal (or the server's own end)
    except KeyboardInterrupt:  # SIGINT, SIGTERM, SIGHUP
        return 0
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
