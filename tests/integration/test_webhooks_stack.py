"""Webhooks under the real stack: a job that names a webhook, a receiver on loopback that
is down at first, the reconciler's deliverer retrying until it is up; and what the API
refuses at the door."""
from __future__ import annotations

import subprocess
import sys

import pytest

from genq.devstack import free_port, wait_for
from tests.helpers.webhook_receiver import Receiver, payload_ids

pytestmark = pytest.mark.integration


def make_secret(stack, tenant: str = "tests") -> str:
    """As an operator does: `genq webhooks set` prints the secret once on stdout; `show`
    never prints it."""
    made = genq_cli(stack, "webhooks", "set", "--tenant", tenant)
    secret = made.stdout.strip()
    assert secret.startswith("whsec_") and "no default endpoint" in made.stderr, made
    shown = genq_cli(stack, "webhooks", "show", "--tenant", tenant).stdout
    assert shown.startswith(f"{tenant}  (no default endpoint)") and "active" in shown and secret not in shown
    assert genq_cli(stack, "webhooks", "set", "--tenant", tenant).stdout == ""  # a secret is shown once
    return secret


def genq_cli(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "genq", *args], env=stack.env, capture_output=True, text=True,
                          timeout=60, check=True)


def attempts_of(stack, job_id) -> list[dict]:
    return [a for d in stack.get(f"/v1/jobs/{job_id}/webhooks").json()["deliveries"] for a in d["attempts"]]


def test_a_receiver_that_is_down_for_a_while_gets_the_event_once_it_is_up(make_stack):
    stack = make_stack(webhook_allow_private=True, webhook_retry_seconds=[0.5] * 20, webhook_poll_seconds=0.2)
    secret = make_secret(stack)
    stack.start_reconciler()
    stack.start_worker()
    port = free_port()
    url = f"http://127.0.0.1:{port}/hooks"
    job_id = stack.submit({"model": "fault", "prompts": ["ok a", "ok b"], "webhook": {"url": url}})
    assert stack.wait_terminal(job_id)["state"] == "succeeded"
    wait_for(lambda: len(attempts_of(stack, job_id)) >= 2, 60, what="two failed attempts")  # nobody listens
    with Receiver(secret, port=port) as receiver:
        wait_for(lambda: receiver.verified(), 30, what="the delivery")
        [delivery] = stack.get(f"/v1/jobs/{job_id}/webhooks").json()["deliveries"]
        wait_for(lambda: stack.get(f"/v1/jobs/{job_id}/webhooks").json()["deliveries"][0]["state"] == "delivered",
                 10, what="the delivery to be recorded")
    [payload] = receiver.verified()  # verified with the tenant's secret by the standardwebhooks package
    assert payload["type"] == "job.completed" and payload["data"]["id"] == job_id
    assert payload["data"]["counts"]["succeeded"] == 2
    assert payload_ids(receiver) == [delivery["id"]]  # one success for the one event id
    record = stack.get(f"/v1/jobs/{job_id}/webhooks").json()["deliveries"][0]
    assert record["attempts"][-1]["status_code"] == 200
    assert all(a["status_code"] is None and a["error"] for a in record["attempts"][:-1])


def test_the_door_refuses_internal_urls_and_a_tenant_without_a_secret(make_stack):
    stack = make_stack()
    body = {"model": "fault", "prompts": ["ok"]}
    no_secret = stack.post("/v1/jobs", json={**body, "webhook": {"url": "https://hooks.example.com/x"}})
    assert no_secret.status_code == 409 and no_secret.json()["error"]["field"] == "webhook"  # until an operator acts
    make_secret(stack)
    for url in ("http://127.0.0.1:8000/x", "http://169.254.169.254/latest/meta-data", "http://[::1]/x"):
        refused = stack.post("/v1/jobs", json={**body, "webhook": {"url": url}})
        assert refused.status_code == 403 and refused.json()["error"]["field"] == "webhook.url", refused.text
    not_http = stack.post("/v1/jobs", json={**body, "webhook": {"url": "ftp://example.com/x"}})
    assert not_http.status_code == 400
    accepted = stack.post("/v1/jobs", json={**body, "webhook": {"url": "https://hooks.example.com/x",
                                                                  "events": ["job.failed"]}})
    assert accepted.status_code == 202
    assert stack.get(f"/v1/jobs/{accepted.json()['id']}/webhooks").json() == {"deliveries": []}
