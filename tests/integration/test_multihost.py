"""Several hosts on one machine, a partition mid-job.

Four Linux network namespaces on a bridge stand for four machines: a genq worker on
each of three, the web server and the reconciler on the fourth. PostgreSQL and a Redis
of the test's own listen on this machine's loopback and are forwarded to the bridge
address; the S3-compatible server (moto) listens on the bridge address itself. A
600-item job runs; one worker host's link is taken down while it holds a slice (a
partition: the worker keeps running), and comes back only after the reconciler has
taken its lease back. The job completes with every item written exactly once; the
cut-off worker, reconnected, finds its lease gone and writes nothing. A second test
checks what the first stands on: a session cut off mid-statement gives its locks back.

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
from psycopg.conninfo import make_conninfo
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
# A transaction left open by a host cut off between statements would hold its rows' locks
# until the link returns; the server ends it instead (deployments with workers on other
# machines want this too).
IDLE_IN_TRANSACTION_MS = 5000
# A host cut off inside a statement leaves its server session waiting, "active", for the
# rest of it: psycopg's executemany (a micro-batch's results) sends each row's Execute, and
# locks that row, before the Sync that ends the statement. No session timeout ends that
# wait, and the reconciler's release of expired leases queues behind the locks (the test
# once timed out so). Only TCP can tell the client is gone: the server's keepalives and
# user timeout, which the forwarder in between would hide, so the forwarder ends a
# connection whose client has not answered for this long.
DEAD_PEER_SECONDS = 3


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


def sessions(url: str) -> list[tuple]:
    """The database's other sessions: what each waits for and since when (a timeout's evidence)."""
    return [tuple(row) for row in query(
        url, "SELECT pid, state, wait_event, now() - xact_start, pg_blocking_pids(pid), left(query, 80) "
             "FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()")]


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
    forwarders = [Forwarder(network.gateway, (database_host.host, database_host.port or 5432),
                            dead_peer_seconds=DEAD_PEER_SECONDS).start(),
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
        reconciler = start("reconciler", "web", "reconcile")
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
        try:
            wait_for(lambda: not query(postgres_url, "SELECT 1 FROM job_items WHERE lease_id = ANY(:leases)",
                                       leases=list(lease_ids)), 60, what="the cut-off host's lease to expire")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; sessions: {sessions(postgres_url)}; reconciler: "
                                 f"{reconciler.log()[-2000:]}") from None
        assert workers[CUT].alive(), "a partition, not a kill"
        log_before = len(workers[CUT].log())
        reconnected_at = query(postgres_url, "SELECT clock_timestamp() AT TIME ZONE 'UTC'")[0][0]
        hosts[CUT].reconnect()

        job = stack.wait_terminal(job_id, timeout=300)
        assert job["state"] == "succeeded" and job["counts"]["succeeded"] == ITEMS, job
        try:  # a statement whose reply the partition swallowed waits for the dead-server keepalives (shared/db.py)
            found_gone = wait_for(lambda: lost_results(workers[CUT].log()[log_before:]), 120,
                                  what=f"{CUT}, reconnected, to try to store its results")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; its log since: {workers[CUT].log()[log_before:][-3000:]}") from None

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


# Inside a host: a transaction whose UPDATE's Execute has left (its row locked) and whose
# Sync has not, as an executemany that the link drops under leaves it.
HALF_SENT_STATEMENT = """
import sys, time, psycopg
connection = psycopg.connect(sys.argv[1])
connection.execute("SELECT 1")  # BEGIN
pgconn = connection.pgconn
pgconn.enter_pipeline_mode()
pgconn.send_query_params(b"UPDATE multihost_probe SET v = v + 1 WHERE id = 1", None)
pgconn.flush()
print(connection.info.backend_pid, flush=True)
time.sleep(300)
"""


def test_a_session_cut_off_inside_a_statement_gives_its_locks_back(network, postgres_url):
    """What the test above stands on: a host cut off mid-statement, holding a row lock
    in a session that no session timeout ends, loses that session and its lock within
    seconds (as a deployment's server keepalives would have it)."""
    execute(postgres_url, "DROP TABLE IF EXISTS multihost_probe",
            "CREATE TABLE multihost_probe (id INT PRIMARY KEY, v INT NOT NULL)", "INSERT INTO multihost_probe VALUES (1, 0)")
    database = make_url(postgres_url)
    forwarder = Forwarder(network.gateway, (database.host, database.port or 5432),
                          dead_peer_seconds=DEAD_PEER_SECONDS).start()
    conninfo = make_conninfo(host=network.gateway, port=forwarder.port, dbname=database.database,
                             user=database.username, password=database.password or "",
                             options=f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}")
    host = network.hosts[0]
    client = subprocess.Popen(host.command([sys.executable, "-c", HALF_SENT_STATEMENT, conninfo]),
                              stdout=subprocess.PIPE, text=True)
    try:
        pid = int(client.stdout.readline() or 0)
        assert pid, "the client in the host could not start its statement"
        time.sleep(IDLE_IN_TRANSACTION_MS / 1000 + 1)  # past the session timeout: it does not apply
        assert session(postgres_url, pid) == [("active", "ClientRead")]
        assert locked(postgres_url), "the half-sent UPDATE holds no lock: nothing to give back"
        host.cut()
        cut_at = time.monotonic()
        wait_for(lambda: not session(postgres_url, pid), 30, what="the server to end the session of the cut-off host")
        ended_after = time.monotonic() - cut_at
        assert not locked(postgres_url)
        assert client.poll() is None, "a partition, not a kill"
        print(f"\nsession of a host cut off mid-statement ended {ended_after:.1f} s after the cut")
    finally:
        client.kill()
        client.wait(10)
        forwarder.stop()
        execute(postgres_url, "DROP TABLE IF EXISTS multihost_probe")


def session(url: str, pid: int) -> list[tuple[str, str]]:
    return [tuple(row) for row in query(url, "SELECT state, wait_event FROM pg_stat_activity WHERE pid = :pid", pid=pid)]


def locked(url: str) -> bool:
    try:
        execute(url, "SET LOCAL lock_timeout = '200ms'", "SELECT 1 FROM multihost_probe WHERE id = 1 FOR UPDATE")
    except sqlalchemy.exc.OperationalError:
        return True
    return False


def _healthy(base_url: str) -> bool:
    try:
        return requests.get(f"{base_url}/healthz", timeout=2).ok
    except requests.RequestException:
        return False
