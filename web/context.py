"""What the web process builds once per app (settings, registry, Celery client, storage,
database sessions), reachable from views through `genq()` and `db()`."""
from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app, g, request
from sqlalchemy.orm import Session, sessionmaker

from shared.keys import KeyCache
from shared.queue import Wakeups
from shared.registry import Registry
from shared.settings import Settings
from shared.storage import Storage
from web.queries import RecentOutlooks
from web.quota import PendingQuota
from web.tokens import PromptTokenLimits

SAFE_METHODS = ("GET", "HEAD")


@dataclass
class GenqContext:
    settings: Settings
    registry: Registry
    celery: Celery
    wakeups: Wakeups
    sessions: sessionmaker[Session]
    read_sessions: sessionmaker[Session]  # for GET and HEAD: they never write
    storage: Storage
    token_limits: PromptTokenLimits
    keys: KeyCache
    quota: PendingQuota
    outlooks: RecentOutlooks


def genq() -> GenqContext:
    return current_app.extensions["genq"]


def db() -> Session:
    """The request's database session, closed at teardown."""
    if "db_session" not in g:
        ctx = genq()
        g.db_session = ctx.read_sessions() if request.method in SAFE_METHODS else ctx.sessions()
    return g.db_session


def close_db(_exc: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
