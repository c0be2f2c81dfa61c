"""The published contract matches the server, checked from outside: the `schemathesis`
command (every phase, stateful included, every check) against `genq up` over real HTTP,
gunicorn and all, as a user would run it against their own deployment.

The deployment is configured so that everything it checks is in its document: a text
model's prompt-token budget is a run-time limit JSON Schema cannot state, so this
registry gives tiny-text a budget (96 tokens) that no prompt of GENQ_MAX_PROMPT_CHARS (24
characters, at most 4 bytes-level tokens each) can exceed, and caps max_new_tokens so
that budget plus the answer fits the model's 128 positions.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genq.devstack import free_port
from tests import tiny_models
from tests.helpers.up import UpProcess

pytestmark = pytest.mark.integration
SEED = 20261130
MAX_EXAMPLES = int(os.environ.get("GENQ_SCHEMATHESIS_EXAMPLES", "25"))
REQUEST_TIMEOUT = 3  # seconds: also how long an event stream is read


@pytest.fixture
def contract_registry(tmp_path, tiny_model_dirs):
    entries = tiny_models.tiny_registry_entries(tiny_model_dirs["text"], tiny_model_dirs["uncond"], tiny_model_dirs["sd"])
    entries["models"]["tiny-text"]["limits"] = {"max_new_tokens": {"max": 32}, "prompt_tokens": {"max": 96}}
    # The item limit counts prompts x n, a product no JSON Schema can state: with n fixed at
    # 1 the document's maxItems on prompts is the whole rule, so a refusal is a real finding.
    for entry in entries["models"].values():
        entry.setdefault("limits", {})["n"] = {"max": 1}
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(entries))
    return path


def test_schemathesis_from_outside_finds_nothing(tmp_path, contract_registry):
    # Event streams may never end: schemathesis reads each for --request-timeout seconds, and
    # a keep-alive every half second keeps one from waiting longer for its next chunk.
    up = UpProcess(tmp_path / "var", contract_registry, free_port(), GENQ_MAX_PROMPT_CHARS="24",
                   GENQ_RATE_LIMIT="1000000/minute", GENQ_MAX_ITEMS_PER_JOB="50", GENQ_EVENTS_HEARTBEAT_SECONDS="0.5")
    try:
        up.wait_up()
        key = (up.data_dir / "api-key").read_text().strip()
        run = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "run", f"{up.url}/openapi.json",
             "-H", f"Authorization: Bearer {key}", "--checks", "all", "--max-examples", str(MAX_EXAMPLES),
             "--seed", str(SEED), "--request-timeout", str(REQUEST_TIMEOUT)],
            capture_output=True, text=True, timeout=900, cwd=tmp_path, env=dict(os.environ, NO_COLOR="1"))
    finally:
        assert up.stop() == 0
    output = run.stdout + run.stderr
    cases = [line.strip() for line in output.splitlines() if " generated, " in line]  # "N generated, N passed, ..."
    print("\n" + "\n".join(cases))
    assert run.returncode == 0, output[-6000:]
    assert "Stateful" in output and cases and "found" not in cases[-1], cases
