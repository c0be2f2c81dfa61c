"""The Flask app factory."""
from __future__ import annotations

import logging

from flask import Flask

from shared.db import session_factory
from shared.keys import KeyCache
from shared.queue import Wakeups, make_celery
from shared.registry import load_registry
from shared.settings import Settings, get_settings
from shared.storage import storage_from_settings
from web.api import api
from web.console import console
from web.context import GenqContext, close_db
from web.docs import docs
from web.errors import register_error_handlers
from web.events import events
from web.hardening import add_security_headers, init_cors
from web.health import health
from web.job_removal import removal
from web.metrics import init_metrics
from web.openai_batches import batches as openai_batches
from web.openai_files import files as openai_files
from web.queries import RecentOutlooks
from web.quota import PendingQuota
from web.rate_limits import init_rate_limits
from web.tokens import PromptTokenLimits
from web.webhook_views import webhooks


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    celery = make_celery(settings)
    app.extensions["genq"] = GenqContext(
        settings=settings,
        registry=load_registry(settings.models_file),
        celery=celery,
        wakeups=Wakeups(celery, settings.redis_url, settings.wakeup_mark_seconds),
        sessions=session_factory(settings.database_url),
        read_sessions=session_factory(settings.database_url, read_only=True),
        storage=storage_from_settings(settings),
        token_limits=PromptTokenLimits(),
        keys=KeyCache(settings.auth_cache_seconds),
        quota=PendingQuota(settings.max_pending_items_per_tenant),
        outlooks=RecentOutlooks(settings.outlook_cache_seconds),
    )
    app.teardown_appcontext(close_db)
    register_error_handlers(app)
    app.register_blueprint(api)
    app.register_blueprint(events)  # live events (SSE)
    app.register_blueprint(webhooks)  # a job's webhook deliveries
    app.register_blueprint(removal)  # DELETE /v1/jobs/<id>
    app.register_blueprint(health)
    app.register_blueprint(docs)
    app.register_blueprint(console)  # the web console at /
    app.register_blueprint(openai_files)  # the OpenAI-compatible Files and Batches API
    app.register_blueprint(openai_batches)
    init_metrics(app, settings)  # GET /metrics, request timing, the workers' progress and throughput (Redis)
    init_rate_limits(app, settings.redis_url, settings.rate_limit, {api.name, openai_files.name, openai_batches.name},
                     settings.rate_limit_block)
    app.after_request(add_security_headers)
    if settings.cors_origins:
        init_cors(app, settings.cors_origins)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return app
