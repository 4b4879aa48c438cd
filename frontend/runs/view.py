"""What ``GET /runs/{run_id}`` shows of a run and its delivery."""

from __future__ import annotations

from typing import Any

from ..store import DeliveryState, Run


def run_view(run: Run, delivery: DeliveryState | None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "run_id": run.id,
        "status": str(run.status),
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }
    if run.body is not None:
        view.update({k: v for k, v in run.body.items() if k != "run_id"})
    if delivery is not None:
        view["webhook"] = {
            "status": str(delivery.status),
            "attempts": delivery.attempts,
            "last_status": delivery.last_status,
        }
    return view
