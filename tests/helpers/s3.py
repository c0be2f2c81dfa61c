"""A real S3-compatible server for tests: moto in server mode, as a subprocess on a free
port (stoppable like the tests' own Redis), a bucket in it, and the environment a genq
process needs to use it."""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import boto3
import requests

from genq.devstack import ServiceProcess, free_port, wait_for
from shared.s3 import S3Storage

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "genq-test", "AWS_SECRET_ACCESS_KEY": "genq-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


class MotoServer:
    def __init__(self, log_dir: Path, host: str = "127.0.0.1", port: int | None = None):
        self.host = host
        self.port = port or free_port()
        self.log_dir = Path(log_dir)
        self.process: ServiceProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "MotoServer":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.process = ServiceProcess("moto", [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
                                      dict(os.environ), self.log_dir)
        wait_for(self._answers, 30, what=f"moto on {self.url}")
        return self

    def _answers(self) -> bool:
        if not self.process.alive():
            raise RuntimeError(f"moto exited: {self.process.log()[-2000:]}")
        try:
            return requests.get(f"{self.url}/moto-api/", timeout=1).status_code < 500
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10)
        self.process = None

    def new_bucket(self) -> str:
        name = f"genq-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def client(self):
        return boto3.client("s3", endpoint_url=self.url, region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
                            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def settings(self, bucket: str, prefix: str) -> dict[str, str]:
        """The genq settings (Stack keywords) that keep every process's outputs under
        `prefix` in `bucket`, as an operator sets them."""
        return {"storage_url": f"s3://{bucket}/{prefix}", "s3_endpoint_url": self.url,
                "s3_region": CREDENTIALS["AWS_DEFAULT_REGION"], "s3_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                "s3_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}

    def storage(self, bucket: str, prefix: str = "") -> S3Storage:
        return S3Storage(bucket, prefix, endpoint_url=self.url, region=CREDENTIALS["AWS_DEFAULT_REGION"],
                         access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
                         secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"])


def assert_objects_match_rows(database_url: str, storage) -> dict[str, int]:
    """The ledger's promise on any storage: every item terminal and out of its lease, one
    output per succeeded item, and exactly the objects that succeeded rows name."""
    from shared.db import session_scope
    from shared.orm import ItemState, Job, JobItem

    with session_scope(database_url) as session:
        items = session.query(JobItem).all()
        jobs = session.query(Job).all()
    assert all(job.state.is_terminal() for job in jobs), [(j.id, j.state) for j in jobs if not j.state.is_terminal()]
    assert all(item.state.is_terminal() and item.lease_id is None for item in items)
    for item in items:
        outputs = (item.output_text is not None) + (item.output_key is not None)
        assert outputs == (item.state == ItemState.SUCCEEDED), (item.job_id, item.index, item.state)
    keys = {item.output_key for item in items if item.output_key}
    stored = set(storage.keys())
    assert stored == keys, f"objects without a row: {sorted(stored - keys)[:5]}; rows without an object: {sorted(keys - stored)[:5]}"
    return {state.value: sum(i.state == state for i in items) for state in ItemState}
