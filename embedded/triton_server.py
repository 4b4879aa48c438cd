"""Run a real ``tritonserver`` (the one bundled in ``nvidia-pytriton``) on our model repository, no Docker.

The bundled binary finds its libraries relative to itself, so it runs where pip installed it. The Python
backend needs the stub built for *this* Python beside ``libtriton_python.so``; we assemble that backend
folder under ``.build/`` from the wheel's files. ``LD_LIBRARY_PATH`` points at this Python's libpython
(else the stub binds the system one) and ``PYTHONPATH`` at this environment's site-packages.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from embedded.lifecycle import STOP_SIGNALS, Stopped, spawn_server

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "model_repository"
DEFAULT_BUILD_DIR = REPO_ROOT / ".build" / "triton"
DEFAULT_MODEL_PATH = REPO_ROOT / ".models" / "tiny-sd-img2img"
LOG_TAIL_LINES = 60
# Triton's line for a model that failed to load; its message ends at the first escaped newline (a traceback follows).
LOAD_FAILURE = re.compile(
    r"failed to load '(?P<model>[^']+)' version \d+: (?:\w+: )?(?:TritonModelException: )?(?P<why>.*?)(?:\\n|\"?$)"
)
SHM_DIR = Path("/dev/shm")  # noqa: S108 - only our own prefixed files are removed


def free_port() -> int:
    """A port the OS says is free now (tests and benchmarks never use the defaults)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def copy_model_repository(destination: Path, replacements: dict[str, str]) -> Path:
    """The shipped model repository with some config.pbtxt lines changed (tests of other settings)."""
    repository = destination / "model_repository"
    shutil.copytree(DEFAULT_MODEL_REPOSITORY, repository, ignore=shutil.ignore_patterns("__pycache__"))
    config = repository / "sd_img2img" / "config.pbtxt"
    text = config.read_text()
    for old, new in replacements.items():
        assert old in text, old
        text = text.replace(old, new)
    config.write_text(text)
    return repository


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (a zombie waiting for its reaper does not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":  # after the name: state, ppid, pgrp
            return True
    return False


STUB_BINARY = "triton_python_backend_stub"


def stub_model(cmdline: list[str]) -> str | None:
    """The model a Python backend stub serves (each model has its own stub process), from its command line:
    the stub's first argument is that model's ``<model>/<version>/model.py``. None for any other process."""
    if len(cmdline) < 2 or not cmdline[0].endswith(STUB_BINARY):
        return None
    return Path(cmdline[1]).parent.parent.name


class TritonStartError(RuntimeError):
    """tritonserver exited or did not become ready; the message carries its log tail."""


def bundled_triton_dir() -> Path:
    import pytriton

    return Path(pytriton.__file__).resolve().parent / "tritonserver"


def prepare_backend_dir(build_dir: Path) -> Path:
    """Assemble ``<build_dir>/backends/python`` with the stub for the running Python; returns ``backends``."""
    triton_dir = bundled_triton_dir()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = triton_dir / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonStartError(f"nvidia-pytriton has no Python backend stub for Python {version} ({stub})")
    python_dir = build_dir / "backends" / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    sources = [*sorted((triton_dir / "backends" / "python").glob("*.*")), stub]
    for source in sources:
        if source.is_file():
            _install(source, python_dir / source.name)
    return build_dir / "backends"


def _install(source: Path, target: Path) -> None:
    """Copy unless already identical; replace by rename, since a running server may hold the old file."""
    if target.exists():
        old, new = target.stat(), source.stat()
        if (old.st_size, old.st_mtime_ns) == (new.st_size, new.st_mtime_ns):
            return
    # Per process and thread: pods started side by side (embedded/pods.py) install from threads of one process.
    staging = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
    shutil.copy2(source, staging)
    os.replace(staging, target)


def server_environment(model_path: Path | str | None, python_path: tuple[str, ...] = ()) -> dict[str, str]:
    """``python_path`` goes before everything, the running interpreter's packages included (a carried
    numpy<2 for the stub on a machine whose own numpy is 2.x)."""
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    # The copied stub loses its relative RPATH to the wheel's bundled libraries (libcudart).
    wheel_libs = str(bundled_triton_dir().parent.parent / "nvidia_pytriton.libs")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, wheel_libs, env.get("LD_LIBRARY_PATH", "")) if p)
    site_packages = sysconfig.get_paths()["purelib"]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (*python_path, site_packages, env.get("PYTHONPATH", "")) if p)
    if model_path is not None:
        env["SD_MODEL_PATH"] = str(model_path)
    return env


@dataclass
class EmbeddedTriton:
    """A tritonserver child process. Use as a context manager, or ``start()`` / ``stop()``."""

    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    model_path: Path | str | None = DEFAULT_MODEL_PATH
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    build_dir: Path = DEFAULT_BUILD_DIR
    ready_timeout_s: float = 300.0
    echo_logs: bool = False
    log_file: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    python_path: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # added to the server's environment
    # The Python backend's shared-memory regions get this per-server prefix, so the ones a killed server
    # (or a SIGKILLed stub) leaves in /dev/shm can be removed: 16 MiB each otherwise, until reboot.
    shm_prefix: str = field(default_factory=lambda: f"triton_sd_{os.getpid()}_{secrets.token_hex(4)}")
    process: subprocess.Popen[str] | None = field(default=None, init=False)
    _log_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=LOG_TAIL_LINES))
    _load_failure: str | None = None  # the first model-load failure in the log, in one line
    _reader: threading.Thread | None = field(default=None, init=False)
    # Set once stop() has reaped this process and its group: a second stop() must not signal its pid, which
    # the kernel may since have given to another process group (pid_max is 32768 on our machines).
    _stopped: bool = field(default=False, init=False)

    @classmethod
    def on_free_ports(
        cls, model_repository: Path, model_path: Path | str, *, ready_timeout_s: float = 300.0
    ) -> EmbeddedTriton:
        """Not started; tests and benchmarks never take the default ports."""
        return cls(
            model_repository=model_repository,
            model_path=model_path,
            http_port=free_port(),
            grpc_port=free_port(),
            metrics_port=free_port(),
            ready_timeout_s=ready_timeout_s,
        )

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def command(self) -> list[str]:
        backends = prepare_backend_dir(self.build_dir)
        return [
            str(bundled_triton_dir() / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={backends}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-cpu-metrics=true",
            "--exit-on-error=true",
            "--strict-readiness=true",
            # Images travel through shared memory; start big enough for a batch of 512 px images.
            "--backend-config=python,shm-default-byte-size=16777216",
            "--backend-config=python,shm-growth-byte-size=16777216",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self.extra_args,
        ]

    def log_tail(self) -> str:
        return "".join(self._log_tail)

    def remove_shm_regions(self) -> int:
        """Unlink this server's leftover shared-memory regions (call only while it is not running)."""
        removed = 0
        for region in SHM_DIR.glob(f"{self.shm_prefix}*"):
            try:
                region.unlink()
                removed += 1
            except OSError:
                pass
        return removed

    def start(self) -> EmbeddedTriton:
        """Start (or, after ``stop()`` or a crash, start again on the same ports) and wait until ready."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("tritonserver is already running")
        self.remove_shm_regions()
        self._stopped = False
        self._load_failure = None
        self.process = spawn_server(  # its own session: our signal handlers decide what reaches it
            self.command(),
            env={**server_environment(self.model_path, self.python_path), **self.env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read_logs, name="tritonserver-logs", daemon=True)
        self._reader.start()
        try:
            self.wait_ready()
        except BaseException:  # not ready, or interrupted while loading: nothing is left running
            self.stop()
            raise
        return self

    def _read_logs(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        sink = self.log_file.open("a") if self.log_file is not None else None
        try:
            for line in self.process.stdout:
                self._log_tail.append(line)
                if self._load_failure is None and (failed := LOAD_FAILURE.search(line)):
                    self._load_failure = failed["why"]
                if sink is not None:
                    sink.write(line)
                    sink.flush()
                if self.echo_logs:
                    sys.stdout.write(line)
                    sys.stdout.flush()
        finally:
            if sink is not None:
                sink.close()

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._join_reader()
                self.remove_shm_regions()
                if self._load_failure is not None:  # one line saying why (a folder of another kind, say)
                    where = f" (tritonserver's log: {self.log_file})" if self.log_file is not None else ""
                    raise TritonStartError(self._load_failure + where)
                raise TritonStartError(
                    f"tritonserver exited with code {self.process.returncode} before it was ready; log tail:\n"
                    + self.log_tail()
                )
            if self.is_ready():
                return
            time.sleep(0.25)
        self.stop()
        raise TritonStartError(
            f"tritonserver not ready after {self.ready_timeout_s:.0f} s; log tail:\n{self.log_tail()}"
        )

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)

    def send_signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signum)

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s`` (a server whose stub died never finishes a graceful stop)."""
        if self.process is None:
            return None
        if self._stopped:
            return self.process.returncode
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        # A SIGKILLed tritonserver leaves its Python stub running (it shares the server's session/group);
        # wait until the group is gone, so that whoever stops us finds the ports and processes free.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while group_alive(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._join_reader()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.remove_shm_regions()
        self._stopped = True
        return self.process.returncode

    def __enter__(self) -> EmbeddedTriton:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run tritonserver (from nvidia-pytriton) on our model repository.")
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument(
        "--model-path", default=str(DEFAULT_MODEL_PATH), help="diffusers folder or hub id (SD_MODEL_PATH)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for all)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    args, extra = parser.parse_known_args(argv)

    server = EmbeddedTriton(
        model_repository=args.model_repository.resolve(),
        model_path=args.model_path,
        host=args.host,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        ready_timeout_s=args.ready_timeout,
        echo_logs=True,
        extra_args=extra,
    )

    stopping: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        # Any stop signal is a graceful stop (tritonserver would die on SIGHUP and leave its stub).
        stopping.append(signum)
        if server.process is None:  # not started yet: nothing to forward it to
            raise Stopped(signum)
        server.send_signal(signal.SIGTERM)

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    try:
        server.start()
        print(
            f"tritonserver ready: HTTP {server.http_url}  gRPC {server.grpc_url}  "
            f"metrics {server.host}:{server.metrics_port}",
            flush=True,
        )
        assert server.process is not None
        code = server.process.wait()
    except TritonStartError as exc:
        if stopping:  # stopped while it loaded: not a failure to start
            return 0
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except Stopped:
        return 0
    finally:
        server.stop()  # the stub and the shared-memory regions too
    return 0 if stopping else code


if __name__ == "__main__":
    sys.exit(main())
