"""Session fixtures: the tiny model, one real tritonserver, frontends in front of it, helpers on ``sys.path``."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_VERSION_DIR = REPO_ROOT / "model_repository" / "sd_img2img" / "1"
sys.path.insert(0, str(MODEL_VERSION_DIR))  # img2img_requests / img2img_pipeline, as the stub sees them

from embedded.lifecycle import stop_on_signals  # noqa: E402
from embedded.postgres import EmbeddedPostgres  # noqa: E402
from embedded.triton_server import DEFAULT_MODEL_REPOSITORY, EmbeddedTriton, copy_model_repository  # noqa: E402

from .helpers.servers import png_bytes  # noqa: E402
from .helpers.support import API_KEYS, PACE_MS, PACE_S, TEST_LOG_DIR, Frontend, paced, start_triton  # noqa: E402
from .helpers.watchdog import Watchdog  # noqa: E402

# Lines of each tritonserver log a failing session prints.
FAILED_SESSION_LOG_LINES = 60
# The shared tritonservers, each under the production supervisor: restarted at once if it dies, once per session
# (tests/helpers/watchdog.py).
SESSION_SERVERS = ("triton", "paced_triton")
WATCHDOG = pytest.StashKey[Watchdog]()


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM and SIGHUP (a CI time-out, a closed terminal) end the session like Ctrl-C: pytest then tears
    # the session's fixtures down, so no server it started outlives it.
    stop_on_signals()
    # The settings of the developer's own shell (an exported SD_DATABASE_URL, say) never reach a test.
    for name in [name for name in os.environ if name.startswith("SD_")]:
        del os.environ[name]
    remove_finished_sessions_logs()
    config.stash[WATCHDOG] = Watchdog()


def remove_finished_sessions_logs() -> None:
    """Logs are named PID-...: those of sessions that have ended go (another session may be running)."""
    for log in TEST_LOG_DIR.glob("*.log"):
        pid = log.name.split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            log.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int) -> None:
    """A shared server's revival, always; on failure, the tail of every tritonserver log of this session
    (CI keeps only what pytest prints)."""
    revived = terminalreporter.config.stash[WATCHDOG].report()
    if revived:
        terminalreporter.section("shared tritonservers that died and were restarted")
        for line in revived:
            terminalreporter.line(line)
    if exitstatus == 0 or not TEST_LOG_DIR.is_dir():
        return
    for log in sorted(TEST_LOG_DIR.glob(f"{os.getpid()}-*.log")):
        lines = log.read_text(errors="replace").splitlines()[-FAILED_SESSION_LOG_LINES:]
        terminalreporter.section(f"{log.name}: last {len(lines)} lines")
        for line in lines:
            terminalreporter.line(line)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--reliability-full",
        action="store_true",
        help="run tests/reliability at full scale (make reliability); default: the fast subset",
    )


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """The tiny random-weight pipeline (built once; ``make model`` builds the same folder)."""
    from embedded.tiny_model import build
    from embedded.triton_server import DEFAULT_MODEL_PATH

    build(DEFAULT_MODEL_PATH)
    return DEFAULT_MODEL_PATH


@pytest.fixture(autouse=True)
def session_servers_alive(request: pytest.FixtureRequest) -> None:
    """Before a test that uses a shared tritonserver: it is alive (its supervisor restarts a dead one, once
    per session; reported in the summary)."""
    watchdog = request.config.stash[WATCHDOG]
    for name in SESSION_SERVERS:
        if name in request.fixturenames:
            server = request.getfixturevalue(name)
            supervisor = watchdog.supervisors.get(name)
            # A module's own fixture of that name (test_run_control's ``triton`` is the paced server) is
            # not this shared server: the one it wraps is checked under its own name.
            if supervisor is not None and supervisor.triton is server:
                watchdog.check(name, request.node.nodeid)


@pytest.fixture(scope="session")
def triton(tiny_model_path: Path, pytestconfig: pytest.Config) -> Iterator[EmbeddedTriton]:
    """One real tritonserver on free ports, shared by the integration and end-to-end tests (supervised)."""
    server = start_triton(DEFAULT_MODEL_REPOSITORY, tiny_model_path)
    supervisor = pytestconfig.stash[WATCHDOG].supervise("triton", server)
    yield server
    supervisor.stop()  # first: a stopped server is no death to act on
    server.stop()


@pytest.fixture(scope="session")
def paced_triton(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[EmbeddedTriton]:
    """A second tritonserver on the paced model (``PACE_MS`` per step), for tests that need long runs.

    Its batcher waits up to 200 ms for a batch, so requests sent together meet in one call however
    loaded the machine is; and torch runs one thread: two threads' barriers on a machine whose cores
    are busy made a 60-step batch of 2 take over 250 s, against a few seconds on one thread."""
    repository = copy_model_repository(
        tmp_path_factory.mktemp("paced"),
        {
            **paced(),
            "max_queue_delay_microseconds: 20000": "max_queue_delay_microseconds: 200000",
        },
    )
    server = start_triton(
        repository, tiny_model_path, env={"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}, log_name="paced-triton"
    )
    supervisor = pytestconfig.stash[WATCHDOG].supervise("paced_triton", server)
    yield server
    supervisor.stop()
    server.stop()


@pytest.fixture(scope="session")
def paced_frontend(paced_triton: EmbeddedTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frontend]:
    """A frontend on the paced Triton; checks first that the pace holds (a loud failure, not a wrong one)."""
    server = Frontend(tmp_path_factory.mktemp("paced-frontend"), paced_triton.grpc_url).start()
    try:
        steps = 10
        body = {"prompt": "pace", "image": base64.b64encode(png_bytes()).decode(), "seed": 1, "strength": 1.0}
        request = urllib.request.Request(
            f"{server.url}/predict",
            data=json.dumps({**body, "num_inference_steps": steps}).encode(),
            headers={"Authorization": API_KEYS[0], "Content-Type": "application/json"},
        )
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=120) as answer:  # noqa: S310 - http://127.0.0.1
            assert answer.status == 200
        took = time.monotonic() - started
        assert took >= steps * PACE_S, (
            f"the paced model ran {steps} steps in {took:.2f} s; the run-control tests need at least "
            f"{steps * PACE_S:.2f} s: is min_step_ms={PACE_MS} in its config.pbtxt?"
        )
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    """One real PostgreSQL server on a free port for the session (never a mock)."""
    root = Path(tempfile.mkdtemp(prefix="sd-pg-"))
    root.chmod(0o755)  # as root, the server runs as the postgres user, who must reach its folder
    server = EmbeddedPostgres(root / "cluster").start()
    yield server
    server.destroy()
    shutil.rmtree(root, ignore_errors=True)


_databases = itertools.count()


@pytest.fixture
def postgres_url(postgres: EmbeddedPostgres) -> str:
    """A fresh, empty database on the session's server."""
    return postgres.create_database(f"test_{next(_databases)}")


@pytest.fixture(scope="session")
def frontend(triton: EmbeddedTriton, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Frontend]:
    """The default frontend: 127.0.0.1 allowed for file_url and webhooks (our test servers live there)."""
    server = Frontend(tmp_path_factory.mktemp("frontend"), triton.grpc_url).start()
    yield server
    server.stop()


@pytest.fixture
def make_frontend(triton: EmbeddedTriton, tmp_path: Path) -> Iterator[Callable[..., Frontend]]:
    """Frontends with other settings; stopped after the test."""
    started: list[Frontend] = []

    def make(data_dir: Path | None = None, triton_url: str | None = None, **settings: str) -> Frontend:
        server = Frontend(data_dir or tmp_path / f"fe{len(started)}", triton_url or triton.grpc_url, settings)
        started.append(server.start())
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": API_KEYS[0]}) as session:
        yield session


@pytest.fixture(scope="session")
def image_b64() -> str:
    return base64.b64encode(png_bytes()).decode()
