"""Liveness of a Triton server with the sd_img2img model: dead, or only busy? Stdlib only.

Triton 2.51 never restarts a crashed Python-backend stub, and its live/ready endpoints stay 200 while
every inference fails, so liveness needs more than Triton's health endpoints. A canary inference alone
is not enough either: the stub runs one batch at a time, so behind a long batch (seconds on a GPU,
minutes for a full-size model on a CPU) a canary waits, and a probe that calls that death kills healthy
busy servers. The rules, in order; only evidence of death fails:

1. the model's stub process is gone (when this runs beside the server: the container, ``make serve``);
2. the server does not answer at all (connection refused or no HTTP answer);
3. work is queued (Triton's ``nv_inference_pending_request_count``) and nothing moved for ``stall_s``:
   no denoising step (the model's ``sd_img2img_denoising_steps_total``), no finished execution, no
   answered request (Triton's statistics). While work is queued no canary is sent: it would only queue;
4. otherwise one canary inference: images are life, the stub's "not healthy" error is death (so is the
   model's own, when its step engine has stopped), a full queue is life; no answer in time counts as
   busy until rule 3's ``stall_s`` has passed without progress.

Progress is remembered between probes (a small JSON file for the Kubernetes exec probe, memory in
``embedded/supervisor.py``, which imports this file). Exit 0: alive. Exit 1: dead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field

# Failures that prove the model cannot serve until tritonserver restarts: a dead stub ("Stub process '...' is
# not healthy."), or a model that says it is not healthy (sd_img2img's step engine died: model.py FATAL_MARKER).
# The frontend's triton_backend.FATAL_MARKERS is the same tuple (tests/unit/test_one_source.py).
FATAL_MARKERS = ("is not healthy", "Stub process")
# Failures that prove it is alive, only busy.
BUSY_MARKERS = ("maximum queue size",)
STEP_METRIC = "sd_img2img_denoising_steps_total"
PENDING_METRIC = "nv_inference_pending_request_count"
STUB_BINARY = b"triton_python_backend_stub"


def tensor(name: str, datatype: str, shape: list[int], data: list[object]) -> dict[str, object]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": data}


def request_body(side: int) -> dict[str, object]:
    return {
        "inputs": [
            tensor("prompt", "BYTES", [1, 1], ["canary"]),
            tensor("image", "UINT8", [1, side, side, 3], [127] * (side * side * 3)),
            tensor("negative_prompt", "BYTES", [1, 1], [""]),
            tensor("strength", "FP32", [1, 1], [1.0]),
            tensor("num_inference_steps", "INT32", [1, 1], [1]),
            tensor("guidance_scale", "FP32", [1, 1], [1.0]),
            tensor("num_images_per_prompt", "INT32", [1, 1], [1]),
            tensor("seed", "INT64", [1, 1], [0]),
            tensor("scheduler", "BYTES", [1, 1], [""]),
            # NaN: not given (Triton's JSON parser takes NaN); the canary works on any model family
            tensor("aesthetic_score", "FP32", [1, 1], [math.nan]),
            tensor("negative_aesthetic_score", "FP32", [1, 1], [math.nan]),
        ],
        "outputs": [{"name": "seeds"}],
    }


def probe(url: str, model: str = "sd_img2img", size: int = 64, timeout: float = 15.0) -> str | None:
    """One canary inference; None when the model answered with images, else why not (Triton's own
    error text included, e.g. "Stub process ... is not healthy")."""
    request = urllib.request.Request(
        f"http://{url}/v2/models/{model}/infer",
        data=json.dumps(request_body(size)).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310 - our own server
            outputs = json.load(answer).get("outputs", [])
    except urllib.error.HTTPError as exc:
        detail = exc.read(2000).decode(errors="replace")
        return f"HTTP {exc.code}: {detail}"
    except Exception as exc:  # any failure is a failed probe
        return f"{type(exc).__name__}: {exc}"
    if not any(o.get("name") == "seeds" and o.get("data") == [0] for o in outputs):
        return f"unexpected answer {outputs}"
    return None


def _get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - our own server
        return bytes(answer.read())


def is_reachable(url: str, timeout: float = 5.0) -> str | None:
    """None when the server answers HTTP at all (its live endpoint), else why not."""
    try:
        _get(f"http://{url}/v2/health/live", timeout)
    except urllib.error.HTTPError:
        return None  # it answered
    except Exception as exc:
        return f"tritonserver does not answer: {type(exc).__name__}: {exc}"
    return None


def read_progress(url: str, metrics_url: str | None, model: str, timeout: float = 5.0) -> tuple[list[int], int | None]:
    """(counters that move whenever the model works, requests queued or None when unknown).

    Counters: Triton's executions and answered requests, plus the model's denoising steps (which move
    inside one long batch, where Triton's own counts move only at its end). Not failures: a canary
    that gives up counts as one (measured: each timed-out canary of a frozen stub added a failure).
    """
    counters: list[int] = []
    try:
        stats = json.loads(_get(f"http://{url}/v2/models/{model}/stats", timeout))["model_stats"]
        for entry in stats:
            inference = entry.get("inference_stats", {})
            counters += [int(entry.get("execution_count", 0)), int(inference.get("success", {}).get("count", 0))]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    pending: int | None = None
    if metrics_url:
        try:
            text = _get(f"http://{metrics_url}/metrics", timeout).decode(errors="replace")
        except OSError:
            text = ""
        for line in text.splitlines():
            name, _, rest = line.partition("{")
            if f'model="{model}"' not in rest:
                continue
            value = int(float(line.rsplit(" ", 1)[-1]))
            if name == STEP_METRIC:
                counters.append(value)
            elif name == PENDING_METRIC:
                pending = (pending or 0) + value
    return counters, pending


def stub_state(model: str, server_pid: int | None = None, http_port: int | None = None) -> str | None:
    """The stub is "alive" or "gone" (dead, a zombie, or none), or None when no tritonserver is visible.

    The server: ``server_pid``, else the one started with ``--http-port=<http_port>``, else every visible
    one (a container has one; any of them without a live stub is "gone"). The stub's command line names
    its model instance (``sd_img2img_0``) and its server's pid.
    """
    servers: dict[int, list[bytes]] = {}
    stubs = []
    try:
        entries = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in entries:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                argv = file.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as file:
                state = file.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if argv and argv[0].endswith(b"tritonserver") and state != "Z":
            servers[int(pid)] = argv
        # The model's own stub: its first argument is <model>/<version>/model.py (another model, such as
        # sd_img2img_progress, has a stub of its own whose instance name also starts with "sd_img2img_").
        elif (
            argv and argv[0].endswith(STUB_BINARY) and len(argv) > 1 and argv[1].split(b"/")[-3:-2] == [model.encode()]
        ):
            stubs.append((argv, state))
    if server_pid is not None:
        servers = {pid: argv for pid, argv in servers.items() if pid == server_pid}
    elif http_port is not None:
        flag = f"--http-port={http_port}".encode()
        servers = {pid: argv for pid, argv in servers.items() if flag in argv} or servers
    if not servers:
        return None
    for pid in servers:
        # This server's stubs: their arguments carry its pid; a zombie was killed and not yet reaped.
        own = [state for argv, state in stubs if str(pid).encode() in argv]
        if not own or any(state == "Z" for state in own):
            return "gone"
    return "alive"


@dataclass
class Memory:
    """What a probe remembers from the last: the progress counters and when they last moved (wall clock)."""

    counters: list[int] = field(default_factory=list)
    moved_at: float = 0.0

    def note(self, counters: list[int], now: float) -> None:
        if counters != self.counters or not self.moved_at:
            self.counters, self.moved_at = counters, now

    def load(self, path: str) -> Memory:
        try:
            with open(path) as file:
                saved = json.load(file)
            self.counters, self.moved_at = [int(c) for c in saved["counters"]], float(saved["moved_at"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return self

    def save(self, path: str) -> None:
        with open(f"{path}.tmp", "w") as file:
            json.dump(asdict(self), file)
        os.replace(f"{path}.tmp", path)


@dataclass
class Verdict:
    alive: bool
    fatal: bool  # dead beyond doubt: restart now, not after several probes
    reason: str


@dataclass
class Liveness:
    url: str
    metrics_url: str | None = None
    model: str = "sd_img2img"
    canary_size: int = 64
    canary_timeout_s: float = 15.0
    stall_s: float = 600.0  # longest time without any progress while work waits; above any one step
    check_stub: bool = True
    server_pid: int | None = None
    memory: Memory = field(default_factory=Memory)

    def judge(self, now: float | None = None) -> Verdict:
        port = int(self.url.rsplit(":", 1)[1]) if ":" in self.url else None
        if self.check_stub and stub_state(self.model, self.server_pid, port) == "gone":
            return Verdict(False, True, f"the Python stub of {self.model} is gone")
        unreachable = is_reachable(self.url)
        if unreachable:
            return Verdict(False, False, unreachable)
        counters, pending = read_progress(self.url, self.metrics_url, self.model)
        self.memory.note(counters, time.time() if now is None else now)
        if pending:  # a canary would only queue behind the work: judge by progress
            return self._by_progress(pending, now)
        failure = probe(self.url, self.model, self.canary_size, self.canary_timeout_s)
        if failure is None or any(marker in failure for marker in BUSY_MARKERS):
            self.memory.moved_at = time.time() if now is None else now
            return Verdict(True, False, "answered" if failure is None else "busy: queue full")
        if any(marker in failure for marker in FATAL_MARKERS):
            return Verdict(False, True, failure)
        # No answer in time: a batch is running (or the model hangs); progress decides.
        counters, pending = read_progress(self.url, self.metrics_url, self.model)
        self.memory.note(counters, time.time() if now is None else now)
        return self._by_progress(pending or 1, now, failure)

    def _by_progress(self, pending: int, now: float | None, failure: str = "") -> Verdict:
        still = (time.time() if now is None else now) - self.memory.moved_at
        detail = f"{pending} request(s) waiting, last progress {still:.0f} s ago"
        if still > self.stall_s:
            return Verdict(False, False, f"no progress for {still:.0f} s > {self.stall_s:g} s: {detail}")
        return Verdict(True, False, f"busy: {detail}" + (f" (canary: {failure})" if failure else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", default="127.0.0.1:8000", help="Triton HTTP address")
    parser.add_argument("--metrics-url", default="127.0.0.1:8002", help="Triton metrics address ('' for none)")
    parser.add_argument("--model", default="sd_img2img")
    parser.add_argument("--size", type=int, default=64, help="canary image side (SD 1.5's smallest is 64)")
    parser.add_argument("--timeout", type=float, default=15.0, help="how long the canary waits for its answer")
    parser.add_argument("--stall", type=float, default=600.0, help="seconds without progress while work waits")
    parser.add_argument("--state-file", default="/tmp/sd_triton_liveness.json", help="memory between probes")  # noqa: S108
    parser.add_argument("--no-stub-check", action="store_true", help="not beside the server: skip /proc")
    args = parser.parse_args(argv)
    liveness = Liveness(
        args.url,
        args.metrics_url or None,
        args.model,
        args.size,
        args.timeout,
        args.stall,
        check_stub=not args.no_stub_check,
        memory=Memory().load(args.state_file),
    )
    verdict = liveness.judge()
    liveness.memory.save(args.state_file)
    print(f"{'alive' if verdict.alive else 'dead'}: {verdict.reason}", file=sys.stdout if verdict.alive else sys.stderr)
    return 0 if verdict.alive else 1


if __name__ == "__main__":
    sys.exit(main())
