from __future__ import annotations

import pytest

from shared.db import session_scope
from shared.keys import create_api_key
from web.app import create_app


@pytest.fixture
def app_settings(settings):
    """The settings `app` (and `client`) are made with: a module overrides this fixture to
    change them (other storage, another registry)."""
    return settings


@pytest.fixture
def app(app_settings, redis_server):
    redis_server.client().flushdb()
    return create_app(app_settings)


def make_key(settings, tenant: str, admin: bool = False) -> str:
    with session_scope(settings.database_url) as session:
        _row, key = create_api_key(session, tenant, admin=admin)
    return key


@pytest.fixture
def api_key(settings) -> str:
    return make_key(settings, "acme")


@pytest.fixture
def client(app, api_key):
    """A test client that sends a valid key of tenant `acme` with every request."""
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    return client
