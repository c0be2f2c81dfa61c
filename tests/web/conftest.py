from __future__ import annotations

import pytest

from web.app import create_app


@pytest.fixture
def app(settings, redis_server):
    redis_server.client().flushdb()
    return create_app(settings)


@pytest.fixture
def client(app):
    return app.test_client()
