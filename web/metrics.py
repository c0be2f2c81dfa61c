"""GET /metrics: Prometheus' text format, for operators.

What a scrape reads, and why it stays cheap whatever the ledger holds:
- the open work (jobs, pending and running items per model and job state): one statement
  on the ledger (`queries.open_work_by_model`), which reads the unfinished jobs only;
- counters and histograms (items finished by model and state, jobs and items submitted,
  item run time and queue wait, micro-batch sizes, model loads, out-of-memory halvings,
  lease expiries, reconciler repairs, HTTP requests and their latency): Redis hashes
  that every web, worker and reconciler process adds to as events happen
  (`shared.tallies`, through `shared.watch` in workers), so any web process answers for
  the whole deployment, on one host or many, and a recycled process loses nothing;
- live workers and throughput per model: the micro-batch samples the workers write
  (`shared.throughput`), one read per model that has any.

A scrape builds its metric families afresh (a custom collector in a registry of its own),
so nothing is kept between scrapes. Only an admin key may read it, unless
GENQ_METRICS_PUBLIC is set (for a Prometheus on a private network).
"""
from __future__ import annotations

import logging
import time

import redis
from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from shared.settings import Settings
from shared.tallies import COUNTERS, HISTOGRAMS, RequestTimings
from shared.watch import Watch
from web import queries
from web.auth import current_principal, require_api_key
from web.context import db, genq
from web.errors import Forbidden

log = logging.getLogger(__name__)

metrics = Blueprint("metrics", __name__)
# The counters and histograms kept in Redis (`shared.tallies`), each `genq_<name>`.
COUNTER_HELP = {
    "items_finished": "Items whose results workers committed, by model and state.",
    "jobs_submitted": "Jobs accepted, by model.",
    "items_submitted": "Items of the jobs accepted, by model.",
    "oom_halvings": "Micro-batches that ran out of device memory and were split in halves, by model.",
    "leases_expired": "Running items whose lease expired (a worker lost or stalled), or whose pool process was found "
                      "dead by the next one: given back, or failed at the attempt cap.",
    "reconciler_repairs": "What reconciler passes repaired: lease_released (items), job_settled (jobs), "
                          "wakeup_sent (wake-ups for work nobody was woken for).",
    "webhook_attempts": "Webhook delivery attempts by event and result: delivered, retrying (to be tried again) or "
                        "failed (for good: retries spent, or the endpoint answered 410).",
}
HISTOGRAM_HELP = {
    "http_request_duration_seconds": "HTTP requests by method, route and status, and how long they took.",
    "micro_batch_items": "Items per micro-batch whose results workers committed, by model.",
    "item_run_seconds": "Each finished item's run time: its micro-batch's, from its start (the model loaded) to its "
                        "results' commit, by model.",
    "item_queue_wait_seconds": "Seconds from a job's submission to the claim of each of its items, by model.",
    "model_load_seconds": "Model loads by workers and how long each took, by model (_count: the loads).",
}
WATCH = "genq_watch"
TIMINGS = "genq_request_timings"


def init_metrics(app: Flask, settings: Settings) -> None:
    """The app's Redis view of the workers (`watch()`), GET /metrics, and the timing of
    every request."""
    app.extensions[WATCH] = Watch.from_settings(settings)
    app.extensions[TIMINGS] = RequestTimings(app.extensions[WATCH].tallies)
    app.register_blueprint(metrics)
    app.before_request(_start_clock)
    app.after_request(_count_request)


def watch() -> Watch:
    return current_app.extensions[WATCH]


def _start_clock() -> None:
    g.genq_started = time.perf_counter()


def _count_request(response: Response) -> Response:
    started = g.pop("genq_started", None)
    if started is not None:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        try:
            current_app.extensions[TIMINGS].served(request.method, route, response.status_code,
                                                   time.perf_counter() - started)
        except redis.RedisError as exc:
            log.warning("could not count a request: %s", exc)
    return response


@metrics.get("/metrics")
def scrape():
    if not genq().settings.metrics_public:
        require_api_key()
        if not current_principal().admin:
            raise Forbidden("GET /metrics takes an admin key (or set GENQ_METRICS_PUBLIC=1)")
    try:  # this process's own request timings are part of what it reports
        current_app.extensions[TIMINGS].flush()
    except redis.RedisError as exc:
        log.warning("could not count requests: %s", exc)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(queries.open_work_by_model(db()), watch(), genq().registry.names()))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST.split(";")[0],
                    headers={"Cache-Control": "no-store"})


class _Scrape:
    """The metric families of one scrape, from what `scrape` read."""

    def __init__(self, open_work, watch_: Watch, models: list[str]):
        self.open_work, self.watch, self.models = open_work, watch_, models

    def collect(self):
        yield from self._open_work()
        yield from self._counters()
        yield from self._throughput()

    def _open_work(self):
        jobs = GaugeMetricFamily("genq_jobs_open", "Unfinished jobs, by model and state.", labels=["model", "state"])
        pending = GaugeMetricFamily("genq_items_pending", "Items waiting for a worker, by model.", labels=["model"])
        running = GaugeMetricFamily("genq_items_running", "Items a worker holds now, by model.", labels=["model"])
        per_model: dict[str, list[int]] = {}
        for model, state, count, pending_items, running_items in self.open_work:
            jobs.add_metric([model, state], count)
            totals = per_model.setdefault(model, [0, 0])
            totals[0] += pending_items
            totals[1] += running_items
        for model, (pending_items, running_items) in sorted(per_model.items()):
            pending.add_metric([model], pending_items)
            running.add_metric([model], running_items)
        yield from (jobs, pending, running)

    def _counters(self):
        try:
            counts = self.watch.tallies.read()
        except redis.RedisError as exc:
            log.warning("metrics: could not read counters: %s", exc)
            return
        for name, help_text in COUNTER_HELP.items():
            family = CounterMetricFamily(f"genq_{name}", help_text, labels=list(COUNTERS[name]))
            for label_values, value in sorted(counts.counters.get(name, {}).items()):
                family.add_metric(list(label_values), value)
            yield family
        for name, help_text in HISTOGRAM_HELP.items():
            family = HistogramMetricFamily(f"genq_{name}", help_text, labels=list(HISTOGRAMS[name][0]))
            for labels, histogram in sorted(counts.histograms.get(name, {}).items()):
                family.add_metric(list(labels), histogram.cumulative(), histogram.sum)
            yield family

    def _throughput(self):
        workers = GaugeMetricFamily("genq_workers", "Live workers serving each model (finished a micro-batch "
                                    "of it lately).", labels=["model"])
        rate = GaugeMetricFamily("genq_throughput_items_per_second", "Items per second of each model: one busy "
                                 "worker's rate over the window times its live workers.", labels=["model"])
        try:
            for model, measured in self.watch.throughput.measure_all(self.models).items():
                workers.add_metric([model], measured.workers)
                rate.add_metric([model], measured.items_per_second or 0.0)
        except redis.RedisError as exc:
            log.warning("metrics: could not read throughput: %s", exc)
        yield from (workers, rate)
