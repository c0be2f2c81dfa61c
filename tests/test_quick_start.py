"""The README's quick start (and its Python client example), run verbatim against a
`genq up` as a person would paste it:
`genq up` in one shell, the quick start's commands in another, in the same folder, with
the demo models (built at --quick size) under their registry names.

`localhost:8000` is written into the README, so the whole run happens in a network
namespace of its own (`unshare --net`), where port 8000 is always free; where that is
not permitted it uses this machine's port 8000 if free, and otherwise skips, saying why.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from genq.devstack import port_is_free
from worker.demo import build_demo_models, demo_registry_entries

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
ip link set lo up 2>/dev/null || true
genq up --gpus none > up.log 2>&1 &
UP=$!
for _ in $(seq 900); do grep -q "genq is up" up.log && break; kill -0 $UP 2>/dev/null || break; sleep 0.2; done
grep -q "genq is up" up.log || {{ echo "genq up did not come up"; cat up.log; exit 3; }}
echo "--- quick start"
set -euo pipefail
(
{quick_start}
) > quick-start.out
echo "--- the Python client"
python sdk_example.py > sdk.out
echo "--- home"
curl -s -o /dev/null -w '%{{http_code}} %{{redirect_url}}\\n' localhost:8000/ > home.out
kill -TERM $UP
wait $UP
"""


def quick_start_commands() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Quick start"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def python_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def isolation() -> list[str]:
    if shutil.which("unshare") and subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode == 0:
        return ["unshare", "--net"]
    if port_is_free("127.0.0.1", 8000):
        return []
    pytest.skip("no network namespace (unshare --net refused) and port 8000 is in use here")


def test_the_quick_start_works_as_pasted(tmp_path):
    prefix = isolation()
    build_demo_models(tmp_path / "models", quick=True, progress=lambda line: None)
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(demo_registry_entries(tmp_path / "models")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENQ_")}
    env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", GENQ_RECONCILE_INTERVAL_SECONDS="1",
               GENQ_WEB_PROCESSES="1")  # and the registry: models.yaml in the folder, the default
    script = SCRIPT.format(quick_start=quick_start_commands())
    (tmp_path / "sdk_example.py").write_text(python_example())
    run = subprocess.run([*prefix, "bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=400)
    log = (tmp_path / "up.log").read_text() if (tmp_path / "up.log").exists() else ""
    assert run.returncode == 0, run.stdout + run.stderr + log[-3000:]

    records = [json.loads(line) for line in (tmp_path / "results" / "results.jsonl").read_text().splitlines()]
    assert [r["state"] for r in records] == ["succeeded"] * 3
    answers = [json.loads(line) for line in (tmp_path / "quick-start.out").read_text().splitlines() if line.startswith("{")]
    status, accepted = answers[-2], answers[-1]
    assert status["state"] == "succeeded" and status["counts"]["succeeded"] == 3
    assert accepted["state"] == "queued" and len(accepted["id"]) == 32
    assert (tmp_path / "home.out").read_text().split() == ["200"]  # the web console, no redirect
    printed = (tmp_path / "sdk.out").read_text()  # generated text may hold newlines of its own
    assert printed.startswith("0 succeeded ") and "\n1 succeeded " in printed, printed
