"""Command-line checks that need no running service."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


def genq(*args, **env) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
    return subprocess.run([sys.executable, "-m", "genq", *args], env={**environment, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_auth_off_is_refused_on_a_non_loopback_address(host):
    result = genq("web", "--host", host, "--port", "1", GENQ_AUTH="off")
    assert result.returncode != 0 and "GENQ_AUTH=off is refused" in result.stderr


def test_keys_create_list_and_revoke(tmp_path):
    url = f"sqlite:///{tmp_path / 'genq.db'}"
    assert genq("db", "upgrade", GENQ_DATABASE_URL=url).returncode == 0
    created = genq("keys", "create", "--tenant", "research", "--label", "laptop", GENQ_DATABASE_URL=url)
    key = created.stdout.strip()
    assert created.returncode == 0 and key.startswith("gq_")
    prefix = key.split("_")[1]
    listing = genq("keys", "list", GENQ_DATABASE_URL=url).stdout
    assert prefix in listing and "research" in listing and "active" in listing and key not in listing
    assert genq("keys", "revoke", prefix, GENQ_DATABASE_URL=url).returncode == 0
    assert "revoked" in genq("keys", "list", GENQ_DATABASE_URL=url).stdout
    assert genq("keys", "revoke", prefix, GENQ_DATABASE_URL=url).returncode != 0
    assert "tenant name" in genq("keys", "create", "--tenant", "../x", GENQ_DATABASE_URL=url).stderr


def test_light_commands_do_not_import_torch():
    probe = "import sys, genq.cli, genq.up, web.app, worker.launcher, worker.reconciler; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60).stdout.strip() == "False"


def test_the_webhook_events_the_cli_offers_are_the_ledger_s():
    """genq/webhooks_cli.py spells the events out (importing shared.webhooks would slow
    every genq call); they must stay the ones the ledger sends."""
    from genq.webhooks_cli import webhooks_set
    from shared.webhooks import EVENTS

    choice = next(p for p in webhooks_set.params if p.name == "events").type
    assert tuple(choice.choices) == tuple(EVENTS)


@pytest.mark.parametrize("command", [("up",), ("keys", "list"), ("models", "list")])
def test_a_bad_setting_is_named_in_one_line_not_a_traceback(command, tmp_path):
    result = genq(*command, GENQ_RESULT_TTL="a month", GENQ_WEB_PORT="eighty", GENQ_DATA_DIR=str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "GENQ_RESULT_TTL: 'a month' is not a duration: use 30d" in result.stderr
    assert "GENQ_WEB_PORT" in result.stderr
