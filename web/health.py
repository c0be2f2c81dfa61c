"""Liveness and readiness."""
from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy import text

from web.context import db, genq
from web.operations import DocumentedBlueprint, Reply
from web.response_models import HealthResponse, ReadinessChecks, ReadinessResponse

health = DocumentedBlueprint("health", __name__)


@health.operation("GET", "/healthz", "Liveness", tag="health",
                  responses={200: Reply("The process is up.", HealthResponse)})
def healthz():
    return HealthResponse(status="ok").reply()


@health.operation("GET", "/readyz", "Readiness", tag="health", description="Whether the database and Redis answer.",
                  responses={200: Reply("Ready.", ReadinessResponse),
                             503: Reply("Not ready: a check failed.", ReadinessResponse)})
def readyz():
    checks = {"database": _check(lambda: db().execute(text("SELECT 1"))), "redis": _check(_ping_redis)}
    for name, status in supervised_services(genq().settings.supervisor_state_file).items():
        if status != "ok" or name not in checks:  # a failed probe is never hidden by "running"
            checks[name] = status
    ready = all(value == "ok" for value in checks.values())
    return ReadinessResponse(status="ready" if ready else "not_ready",
                             checks=ReadinessChecks(**checks)).reply(200 if ready else 503)


def _ping_redis() -> None:
    with genq().celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)
        connection.default_channel.client.ping()


def supervised_services(state_file: Path | None) -> dict[str, str]:
    """Under `genq up`: "ok" for each running service, else why it is down and when it
    comes back (the supervisor's own account; the web server is the one answering)."""
    if state_file is None:
        return {}
    try:
        services = json.loads(state_file.read_text())["services"]
    except (OSError, ValueError, KeyError):
        return {}
    now = time.time()
    return {name: "ok" if service["state"] == "running" else
            f"down: exited with {service['last_exit']}; restart {service['restarts'] + 1} "
            f"in {max(0.0, service.get('restart_at', now) - now):.0f} s"
            for name, service in services.items() if name != "web"}


def _check(probe) -> str:
    try:
        probe()
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
