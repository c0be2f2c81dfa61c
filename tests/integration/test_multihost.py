"""Several hosts on one machine, a partition mid-job.

Four Linux network namespaces on a bridge stand for four machines: a genq worker on
each of three, the web server and the reconciler on the fourth. PostgreSQL and a Redis
of the test's own listen on this machine's loopback and are forwarded to the bridge
address; the S3-compatible server (moto) listens on the bridge address itself. A
600-item job runs; one worker host's link is taken down while it holds a slice (a
partition: the worker keeps running), and comes back only after the reconciler has
taken its lease back. The job completes with every item written exactly once; the
cut-off worker, reconnected, finds its lease gone and writes nothing.

Root is needed (ip netns, veth, bridge); where namespaces are not permitted the test
skips and says why.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy
import yaml
from sqlalchemy import text
from sqlalchemy.engine import make_url

from genq.devstack import RedisServer, ServiceProcess, Stack, wait_for
from tests.helpers.database import POSTGRES_URL_VARIABLE, reset_schema
from tests.helpers.netns import NamespacesUnavailable, Network
from tests.helpers.s3 import CREDENTIALS, MotoServer
from tests.helpers.tcp import Forwarder

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
ITEMS = 600
WORKER_HOSTS = ["worker-1", "worker-2", "worker-3"]
CUT = "worker-1"
SETTINGS = {
    "lease_seconds": 4,
    "reconcile_interval_seconds": 0.5,
    "slice_max_items": 16,
    "wakeup_busy_seconds": 0,  # one slice per wake-up: each task's logged report is one slice's
    "rate_limit": "100000/minute",
}
# A transaction left open by a host cut off mid-statement would hold its rows' locks until
# the link returns; the server ends it instead (deployments with workers on other machines
# want this too).
IDLE_IN_TRANSACTION_MS = 5000


@pytest.fixture
def postgres_url():
    url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not url:
        pytest.skip(f"{POSTGRES_URL_VARIABLE} is not set: hosts share a PostgreSQL, not a SQLite file")
    return url


@pytest.fixture
def network():
    missing = [tool for tool in ("ip", "unshare") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"network namespaces are not available: {', '.join(missing)} not found")
    if os.geteuid() != 0:
        pytest.skip("network namespaces are not permitted: the test needs root (CAP_NET_ADMIN)")
    try:
        net = Network([*WORKER_HOSTS, "web"]).create()
    except NamespacesUnavailable as exc:
        pytest.skip(f"network namespaces are not permitted here: {exc}")
    yield net
    failures = net.remove()
    assert failures == [] and net.leftovers() == [], (failures, net.leftovers())


@pytest.fixture
def noop_models_file(tmp_path):
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": {"noop": {
        "task": "text-generation", "source": ".", "runner": "bench.noop_runner:NoopRunner",
        "micro_batch_size": 8, "options": {"sleep_ms_per_item": 30}}}}))
    return path


def forwarded_database_url(url: str, host: str, port: int) -> str:
    parsed = make_url(url).set(host=host, port=port,
                               query={"options": f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"})
    return parsed.render_as_string(hide_password=False)


def count_writes(url: str) -> None:
    """The test's instrument: a row per UPDATE that leaves an item succeeded, with the
    lease it was written under, that lease's owner (`cpu@<host>:<pid>`), and whether the
    lease had expired when the write committed (every host here shares one clock)."""
    engine = sqlalchemy.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE IF EXISTS multihost_writes")
        connection.exec_driver_sql("CREATE TABLE multihost_writes (item_id BIGINT NOT NULL, owner TEXT, lease_id TEXT, "
                                   "expired BOOLEAN NOT NULL, at TIMESTAMP NOT NULL DEFAULT (clock_timestamp() AT TIME ZONE 'UTC'))")
        connection.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION multihost_write() RETURNS trigger AS $$ BEGIN "
            "INSERT INTO multihost_writes (item_id, owner, lease_id, expired) VALUES (NEW.id, OLD.lease_owner, "
            "OLD.lease_id, OLD.lease_expires_at < (clock_timestamp() AT TIME ZONE 'UTC')); "
            "RETURN NEW; END $$ "
            "LANGUAGE plpgsql")
        connection.exec_driver_sql(
            "CREATE TRIGGER multihost_write AFTER UPDATE ON job_items FOR EACH ROW "
            "WHEN (NEW.state = 'succeeded') EXECUTE FUNCTION multihost_write()")
    engine.dispose()


def query(url: str, sql: str, **params) -> list:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            return list(connection.execute(text(sql), params))
    finally:
        engine.dispose()


def execute(url: str, *statements: str) -> None:
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            for statement in statements:
                connection.exec_driver_sql(statement)
    finally:
        engine.dispose()


def held_by(url: str, job_id: str, host: str) -> list[tuple[int, str]]:
    return [tuple(row) for row in query(
        url, "SELECT id, lease_id FROM job_items WHERE job_id = :job AND state = 'running' AND lease_owner LIKE :owner",
        job=job_id, owner=f"cpu@{host}:%")]


def succeeded(url: str, job_id: str) -> int:
    return query(url, "SELECT COUNT(*) FROM job_items WHERE job_id = :job AND state = 'succeeded'", job=job_id)[0][0]


def lost_results(log: str) -> int:
    """Items whose results a slice could not store because its lease was gone, from the
    reports the worker's Celery tasks returned."""
    return sum(int(n) for n in re.findall(r"'lost': (\d+)", log))


def test_a_host_cut_off_mid_job_writes_nothing_and_every_item_runs_once(
        tmp_path, network, postgres_url, noop_models_file, capsys):
    reset_schema(postgres_url)
    redis = RedisServer(tmp_path / "redis").start()
    moto = MotoServer(tmp_path, host=network.gateway).start()
    database_host = make_url(postgres_url)
    forwarders = [Forwarder(network.gateway, (database_host.host, database_host.port or 5432)).start(),
                  Forwarder(network.gateway, ("127.0.0.1", redis.port)).start()]
    stack = Stack(tmp_path / "stack", postgres_url, redis.url, noop_models_file,
                  env={"PYTHONPATH": str(REPO_ROOT)}, **SETTINGS)
    processes: list[ServiceProcess] = []
    try:
        stack.migrate()
        count_writes(postgres_url)
        bucket = moto.new_bucket()
        remote_env = dict(stack.env, **CREDENTIALS,
                          GENQ_DATABASE_URL=forwarded_database_url(postgres_url, network.gateway, forwarders[0].port),
                          GENQ_REDIS_URL=f"redis://{network.gateway}:{forwarders[1].port}/0",
                          GENQ_STORAGE_URL=f"s3://{bucket}/outputs", GENQ_S3_ENDPOINT_URL=moto.url)
        hosts = {host.name: host for host in network.hosts}

        def start(name: str, host: str, *args: str) -> ServiceProcess:
            process = ServiceProcess(name, hosts[host].command([sys.executable, "-m", "genq", *args]), remote_env,
                                     stack.root, cwd=REPO_ROOT)
            processes.append(process)
            return process

        web_address = hosts["web"].address
        start("web", "web", "web", "--host", web_address, "--port", str(stack.port), "--workers", "1")
        stack.base_url = f"http://{web_address}:{stack.port}"
        wait_for(lambda: _healthy(stack.base_url), 60, what="the web server in its namespace")
        start("reconciler", "web", "reconcile")
        workers = {name: start(name, name, "worker", "--gpus", "none") for name in WORKER_HOSTS}
        for name, worker in workers.items():
            wait_for(lambda: "ready." in worker.log() or not worker.alive(), 90, what=f"{name} to be ready")
            assert worker.alive(), worker.log()[-3000:]

        for name in WORKER_HOSTS:  # the shared bucket is reachable from every worker host, with its settings
            probe = f"from shared.settings import Settings; from shared.storage import storage_from_settings; " \
                    f"storage_from_settings(Settings()).put('probe/{name}.png', b'{name}')"
            subprocess.run(hosts[name].command([sys.executable, "-c", probe]), env=remote_env, cwd=REPO_ROOT,
                           check=True, timeout=60)
        assert sorted(moto.storage(bucket, "outputs").keys("probe/")) == [f"probe/{n}.png" for n in WORKER_HOSTS]
        job_id = stack.submit({"model": "noop", "prompts": [f"item {i}" for i in range(ITEMS)], "params": {"seed": 7}})
        wait_for(lambda: succeeded(postgres_url, job_id) >= 60 and held_by(postgres_url, job_id, CUT), 120,
                 interval=0.02, what=f"{CUT} to hold a slice mid-job")
        hosts[CUT].cut()
        time.sleep(1)  # bytes already past the link (a commit in flight) land; nothing more can
        done_at_cut = succeeded(postgres_url, job_id)
        held = held_by(postgres_url, job_id, CUT)
        assert held, f"{CUT} finished its slice as the link went down; nothing was cut off"
        lease_ids = {lease for _, lease in held}
        # The partition lasts until the reconciler has taken back every item the host held.
        wait_for(lambda: not query(postgres_url, "SELECT 1 FROM job_items WHERE lease_id = ANY(:leases)",
                                   leases=list(lease_ids)), 60, what="the cut-off host's lease to expire")
        assert workers[CUT].alive(), "a partition, not a kill"
        log_before = len(workers[CUT].log())
        reconnected_at = query(postgres_url, "SELECT clock_timestamp() AT TIME ZONE 'UTC'")[0][0]
        hosts[CUT].reconnect()

        job = stack.wait_terminal(job_id, timeout=300)
        assert job["state"] == "succeeded" and job["counts"]["succeeded"] == ITEMS, job
        found_gone = wait_for(lambda: lost_results(workers[CUT].log()[log_before:]), 120,
                              what=f"{CUT}, reconnected, to try to store its results")

        writes = query(postgres_url, "SELECT item_id, owner, lease_id, expired, at FROM multihost_writes")
        per_item: dict[int, int] = {}
        for item_id, *_ in writes:
            per_item[item_id] = per_item.get(item_id, 0) + 1
        assert len(per_item) == ITEMS and set(per_item.values()) == {1}, "an item was written more than once"
        held_ids = {item_id for item_id, _ in held}
        held_pairs = set(held)  # (item, lease): what the host held once the link was down
        under_lost_lease = [(item_id, owner) for item_id, owner, lease, _, _ in writes if (item_id, lease) in held_pairs]
        assert under_lost_lease == [], f"{CUT} stored results under the lease it lost: {under_lost_lease[:5]}"
        expired = [(item_id, owner) for item_id, owner, _, was_expired, _ in writes
                   if was_expired and owner.startswith(f"cpu@{CUT}:")]
        assert expired == [], f"{CUT} stored results after its lease expired: {expired[:5]}"
        late = [(item_id, owner) for item_id, owner, lease, _, at in writes
                if lease in lease_ids and at >= reconnected_at]
        assert late == [], f"{CUT}, reconnected, stored results under its old lease: {late[:5]}"
        rerun_on = sorted({owner.split(":")[0] for item_id, owner, *_ in writes if item_id in held_ids})
        by_host = {name: sum(owner.startswith(f"cpu@{name}:") for _, owner, *_ in writes) for name in WORKER_HOSTS}
        assert all(by_host.values()), f"every host worked: {by_host}"
        items = stack.items(job_id)
        assert [i["output"]["text"] for i in items] == [f"noop:{i}:{item['seed']}" for i, item in enumerate(items)]
        with capsys.disabled():
            print(f"\nmultihost: {ITEMS} items on {len(WORKER_HOSTS)} worker hosts (web + reconciler on a 4th); "
                  f"{CUT} cut off at {done_at_cut} succeeded, holding {len(held)} items under {len(lease_ids)} lease(s); "
                  f"its items re-run under new leases on {rerun_on}; job {job['state']}: {len(writes)} writes for "
                  f"{len(per_item)} items (exactly once); writes by host {by_host}; {CUT} reconnected, found "
                  f"{found_gone} results' lease gone and wrote none of them")
    finally:
        for process in reversed(processes):
            process.stop(timeout=10)
        for forwarder in forwarders:
            forwarder.stop()
        moto.stop()
        redis.stop()
        reset_schema(postgres_url)
        execute(postgres_url, "DROP TABLE IF EXISTS multihost_writes", "DROP FUNCTION IF EXISTS multihost_write() CASCADE")


def _healthy(base_url: str) -> bool:
    try:
        return requests.get(f"{base_url}/healthz", timeout=2).ok
    except requests.RequestException:
        return False
