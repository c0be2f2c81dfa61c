"""The design a tutorial would write, for bench/throughput.py to compare genq against:
one Celery task per prompt, the model loaded once per worker process and kept warm
in a module global, each task running the runner on its ONE prompt.

Configured as genq's own app is (JSON, late acks, prefetch 1, no result backend; the
bench starts one prefork child). The task stores its text in a Redis hash and records
its completion (INCR + SET of the time) in the same pipeline, so the client can count
completions and read when the last one finished without a result backend.

The worker subprocess reads BENCH_REDIS_URL (the broker), BENCH_MODELS_FILE (a
registry) and BENCH_MODEL (the entry's name, default `bench-text`); the client in
throughput.py sets `app.conf.broker_url` itself.
"""
from __future__ import annotations

import os
from typing import Any

from bench.raw_celery_app import RedisClient, bench_app, record_done

QUEUE = "bench.tutorial"
DONE_KEY = "bench:tutorial:done"
LAST_KEY = "bench:tutorial:last"
RESULTS_KEY = "bench:tutorial:results"

app = bench_app("bench-tutorial", QUEUE)
_redis = RedisClient(app)
_runner = None


def _model():
    """The runner, loaded on the first task of this process and kept for the next ones."""
    global _runner
    if _runner is None:
        from shared.registry import load_registry
        from worker.runners import build_runner

        spec = load_registry(os.environ["BENCH_MODELS_FILE"]).get(os.environ.get("BENCH_MODEL", "bench-text"))
        _runner = build_runner(spec, "cpu")
        _runner.setup()
    return _runner


@app.task(name="bench.generate_one")
def generate_one(index: int, prompt: str, seed: int, params: dict[str, Any]) -> None:
    from worker.runners.base import ItemInput

    [output] = _model().predict([ItemInput(index, prompt, seed)], params)
    client = _redis()
    pipe = client.pipeline(transaction=False)
    pipe.hset(RESULTS_KEY, str(index), output.text)
    record_done(client, DONE_KEY, LAST_KEY, pipe)
