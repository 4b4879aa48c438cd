"""Many model pods behind one ``Backend``: which pod runs each run, following it there, routing around a
broken pod. No ``tritonclient`` here: pods are made by the caller (``triton_backend.TritonPod``), so the
rules below are tested on scripted pods as well as on real tritonservers.

``SD_TRITON_URL`` names the pods: ``host:port`` (one), ``host:port,host:port`` (several; gRPC's ``ipv4:``
prefix is accepted), or ``dns:///name:port``, a headless Service, re-resolved every ``SD_FLEET_RESOLVE_S``:
addresses that appear join, addresses that vanish are drained (no new runs; closed once their runs end).

**Placement.** A step-batched pod runs one UNet forward per latent size per step, so a run placed beside
a run of another size makes every step of both longer by one forward, while one placed beside runs of its
own size shares their forward. Among the pods in placement, a run goes to the pod where it would share
its step with the fewest forwards (sizes in flight there once it joins), then with the fewest rows; ties
go round robin. A pod without room for its rows (``SD_POD_MAX_ROWS``, the model's ``max_rows_in_flight``)
comes last. So a short run does not queue behind long runs of another size while a pod is free, and runs
of one size gather where they share forwards once every pod is busy. A pod's load is what this frontend
has in flight there (counted from the moment it is sent) joined with what the pod's model last reported
(``sd_img2img_progress``'s ``load``, read every ``SD_POD_CHECK_S``): other frontends' runs included.

**Health per pod.** Evidence of death (the stub's "not healthy", no connection) takes a pod out of
placement at once; the readiness probe (``readiness.py``) brings it back once its canary answers. While
every pod is out, runs are placed anyway: the answer is the evidence.

**Failover.** A run whose pod fails with evidence of death before answering is placed once more, on
another pod, within what is left of its deadline. Generation is deterministic, so the bytes are those
the first pod would have made.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from .backend import Pod, QueueDeadlineExpired
from .errors import BackendUnavailable
from .generation import Generated, GenerationInput, PodLoad, Progress
from .metrics import Metrics
from .model_card import ModelCard

log = logging.getLogger(__name__)
# fewest_forwards: the rule above; round_robin: each pod in turn, as gRPC's own policy would (to compare).
PLACEMENTS = ("fewest_forwards", "round_robin")


@dataclass(frozen=True)
class Targets:
    """The pods ``SD_TRITON_URL`` names: fixed addresses, or a name to resolve again and again."""

    addresses: tuple[str, ...] = ()
    dns: tuple[str, int] | None = None  # (name, port) of a headless Service


def parse_targets(url: str) -> Targets:
    """``host:port``, ``host:port,host:port`` (also as gRPC's ``ipv4:``/``ipv6:`` lists) or ``dns:///name:port``."""
    url = url.strip()
    if url.startswith("dns:"):
        host, port = _split(url.removeprefix("dns:").lstrip("/").rpartition("/")[2], url)
        return Targets(dns=(host, port))
    for prefix in ("ipv4:", "ipv6:"):
        url = url.removeprefix(prefix)
    addresses = tuple(_address(*_split(part.strip(), url)) for part in url.split(",") if part.strip())
    if not addresses:
        raise ValueError(f"SD_TRITON_URL names no pod: {url!r}")
    return Targets(addresses=addresses)


def _split(hostport: str, url: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"SD_TRITON_URL: {hostport!r} in {url!r} is not host:port")
    return host.strip("[]"), int(port)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def resolve(name: str, port: int) -> list[str]:
    """Every address ``name`` resolves to now (a headless Service: one per ready pod)."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return sorted({_address(str(info[4][0]), port) for info in infos})


def rows_of(job: GenerationInput) -> int:
    """UNet rows the run holds while it runs (the model's count: images, doubled under guidance)."""
    return job.num_images_per_prompt * (2 if job.guidance_scale > 1 else 1)


def size_of(job: GenerationInput) -> tuple[int, int]:
    return (int(job.image.shape[0]), int(job.image.shape[1]))


@dataclass
class PodSlot:
    """A pod and what this frontend has in flight on it."""

    pod: Pod
    runs: dict[int, tuple[int, tuple[int, int]]] = field(default_factory=dict)  # (rows, size) by call
    draining: bool = False  # its address vanished from the Service: no new runs, closed once empty
    reported: PodLoad | None = None  # the pod's own last report (every frontend's runs there)
    # The model card of its last report that had one: a report that failed (a busy moment) does not
    # forget what the pod serves; a restarted model posts its new card.
    card: ModelCard | None = None

    @property
    def address(self) -> str:
        return self.pod.address

    @property
    def rows(self) -> int:
        """Ours are counted from the moment we send them; the pod's report adds other frontends' runs."""
        ours = sum(rows for rows, _ in self.runs.values())
        return max(ours, self.reported.rows) if self.reported is not None else ours

    @property
    def sizes(self) -> set[tuple[int, int]]:
        ours = {size for _, size in self.runs.values()}
        return ours | self.reported.sizes if self.reported is not None else ours


class Fleet:
    """The ``Backend`` of many pods (one is a fleet too)."""

    def __init__(
        self,
        targets: Targets,
        make_pod: Callable[[str], Pod],
        *,
        max_rows: int = 32,
        placement: str = "fewest_forwards",
        resolve_s: float = 5.0,
        metrics: Metrics | None = None,
        resolver: Callable[[str, int], Awaitable[list[str]]] = resolve,
    ) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS} but is {placement!r}")
        self.targets, self.make_pod, self.max_rows, self.resolve_s = targets, make_pod, max_rows, resolve_s
        self.placement = placement
        self.metrics, self.resolver = metrics, resolver
        self._slots: dict[str, PodSlot] = {}
        self._where: dict[str, PodSlot] = {}  # request id -> the pod running it (progress goes there)
        self._calls = itertools.count()
        self._turn = itertools.count()
        self._resolved_at = -float("inf")
        self._draining: list[PodSlot] = []
        for address in targets.addresses:
            self._join(address)

    # -- the pods ------------------------------------------------------------------------------------

    def pods(self) -> Sequence[Pod]:
        return [slot.pod for slot in self._slots.values()]

    def out(self) -> dict[str, str]:
        """The pods out of placement now, and why."""
        return {slot.address: reason for slot in self._slots.values() if (reason := slot.pod.health.out())}

    async def refresh(self) -> None:
        """Resolve a headless Service again when due; read each pod's load; publish which pods are out."""
        if self.targets.dns is not None and time.monotonic() - self._resolved_at >= self.resolve_s:
            self._resolved_at = time.monotonic()
            try:
                found = await self.resolver(*self.targets.dns)
            except OSError as exc:  # a DNS hiccup is no reason to drop every pod
                log.warning("could not resolve %s: %s", self.targets.dns[0], exc)
            else:
                if found:
                    self._update(list(found))
        slots = list(self._slots.values())
        reports = await asyncio.gather(*(slot.pod.load() for slot in slots), return_exceptions=True)
        for slot, report in zip(slots, reports, strict=True):
            slot.reported = report if not isinstance(report, BaseException) else None
            if slot.reported is not None and slot.reported.model is not None:
                slot.card = slot.reported.model
        if self.metrics is not None:
            for address, slot in self._slots.items():
                self.metrics.pod_out.labels(address).set(int(slot.pod.health.out() is not None))
        await self._close_drained()

    def model_card(self) -> ModelCard | None:
        """The card the pods report, when they agree; None while none has reported one, or when they disagree
        (pods serving different models: which one a run meets is placement's choice, so the model decides)."""
        cards = {slot.card for slot in self._slots.values() if slot.card is not None}
        return cards.pop() if len(cards) == 1 else None

    def _join(self, address: str) -> None:
        self._slots[address] = PodSlot(self.make_pod(address))
        log.info("pod joined: %s", address)

    def _update(self, addresses: list[str]) -> None:
        for address in addresses:
            if address not in self._slots:
                self._join(address)
        for address in [a for a in self._slots if a not in addresses]:
            slot = self._slots.pop(address)
            slot.draining = True
            self._draining.append(slot)
            if self.metrics is not None:
                with contextlib.suppress(KeyError):  # never published
                    self.metrics.pod_out.remove(address)
            log.info("pod left: %s (drained: %d runs in flight)", address, len(slot.runs))

    async def _close_drained(self) -> None:
        for slot in [s for s in self._draining if not s.runs]:
            self._draining.remove(slot)
            await slot.pod.close()

    async def close(self) -> None:
        for slot in [*self._slots.values(), *self._draining]:
            await slot.pod.close()
        self._slots.clear()
        self._draining.clear()

    # -- placement -----------------------------------------------------------------------------------

    def place(self, job: GenerationInput, exclude: Sequence[str] = ()) -> PodSlot:
        """The pod for ``job`` (the rule: this module's docstring)."""
        live = [slot for slot in self._slots.values() if slot.address not in exclude]
        candidates = [slot for slot in live if slot.pod.health.out() is None] or live
        if not candidates:
            raise BackendUnavailable("no model server can take the run; retry later")
        rows, size, turn = rows_of(job), size_of(job), next(self._turn)

        def cost(indexed: tuple[int, PodSlot]) -> tuple[bool, int, int, int]:
            index, slot = indexed
            if self.placement == "round_robin":  # blind to load: only for comparison (bench/fleet.py)
                return (False, 0, 0, (index - turn) % len(candidates))
            load = slot.rows
            return (
                load + rows > self.max_rows and load > 0,
                len(slot.sizes | {size}),
                load,
                (index - turn) % len(candidates),
            )

        return min(enumerate(candidates), key=cost)[1]

    # -- calls ---------------------------------------------------------------------------------------

    async def generate(
        self,
        job: GenerationInput,
        *,
        timeout_s: float | None = None,
        request_id: str = "",
        queue_timeout_s: float | None = None,
    ) -> Generated:
        started, tried = time.monotonic(), list[str]()
        while True:
            slot = self.place(job, exclude=tried)
            call = next(self._calls)
            slot.runs[call] = (rows_of(job), size_of(job))
            if request_id:
                self._where[request_id] = slot
            self._count("placed", slot)
            try:
                return await slot.pod.generate(
                    job, timeout_s=timeout_s, request_id=request_id, queue_timeout_s=queue_timeout_s
                )
            except BackendUnavailable:
                self._count("unavailable", slot)
                if tried or slot.pod.health.out() is None or not self._others(exclude=[slot.address]):
                    raise
                # Its pod died before answering: once more elsewhere, within what is left of its bounds.
                tried.append(slot.address)
                spent = time.monotonic() - started
                timeout_s = None if timeout_s is None else timeout_s - spent
                queue_timeout_s = None if queue_timeout_s is None else queue_timeout_s - spent
                if queue_timeout_s is not None and queue_timeout_s <= 0:
                    raise QueueDeadlineExpired("the deadline passed before the run could be placed again") from None
                if timeout_s is not None and timeout_s <= 0:
                    raise
                log.warning("pod %s died under run %s: placing it again", slot.address, request_id or "-")
                self._count("failover", slot)
            finally:
                del slot.runs[call]
                if request_id and self._where.get(request_id) is slot:
                    del self._where[request_id]

    def _others(self, exclude: Sequence[str]) -> list[PodSlot]:
        return [s for s in self._slots.values() if s.address not in exclude and s.pod.health.out() is None]

    def _count(self, what: str, slot: PodSlot) -> None:
        if self.metrics is not None:
            self.metrics.pod_runs.labels(slot.address, what).inc()

    async def progress(self, request_id: str) -> Progress | None:
        """Asked of the pod running it: only that pod has its progress."""
        slot = self._where.get(request_id)
        return None if slot is None else await slot.pod.progress(request_id)
