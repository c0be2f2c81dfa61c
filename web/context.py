"""What the web process builds once per app (settings, registry, Celery client, storage,
database sessions), reachable from views through `genq()` and `db()`."""
from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app, g
from sqlalchemy.orm import Session, sessionmaker

from shared.registry import Registry
from shared.settings import Settings
from shared.storage import Storage
from web.tokens import PromptTokenLimits


@dataclass
class GenqContext:
    settings: Settings
    registry: Registry
    celery: Celery
    sessions: sessionmaker[Session]
    storage: Storage
    token_limits: PromptTokenLimits


def genq() -> GenqContext:
    return current_app.extensions["genq"]


def db() -> Session:
    """The request's database session, closed at teardown."""
    if "db_session" not in g:
        g.db_session = genq().sessions()
    return g.db_session


def close_db(_exc: BaseException | None = None) -> None:
    session = g.pop("db_session", None)
    if session is not None:
        session.close()
