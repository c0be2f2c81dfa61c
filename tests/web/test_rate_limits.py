"""GENQ_RATE_LIMIT: requests per API key, counted in Redis, over every limited route."""
from __future__ import annotations

import pytest

from shared.errors import ConfigError
from web.app import create_app


def limited_client(settings, api_key, rate: str):
    client = create_app(settings.model_copy(update={"rate_limit": rate})).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {api_key}"
    return client


def test_a_key_over_its_rate_gets_a_429_with_the_seconds_left_in_its_window(settings, redis_server, api_key):
    client = limited_client(settings, api_key, "2/hour")
    assert [client.get("/v1/jobs").status_code for _ in range(2)] == [200, 200]
    refused = client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a"]})
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "too_many_requests"
    assert 1 <= int(refused.headers["Retry-After"]) <= 3600


def test_the_count_is_shared_by_the_api_and_the_openai_routes_but_not_by_health(settings, redis_server, api_key):
    client = limited_client(settings, api_key, "2/hour")
    assert client.get("/v1/jobs").status_code == 200
    assert client.get("/v1/batches").status_code == 200
    assert client.get("/v1/files").status_code == 429
    assert client.get("/healthz").status_code == 200


def test_every_web_process_counts_in_the_same_window(settings, redis_server, api_key):
    first, second = limited_client(settings, api_key, "3/hour"), limited_client(settings, api_key, "3/hour")
    statuses = [client.get("/v1/jobs").status_code for client in (first, second, first, second)]
    assert statuses == [200, 200, 200, 429]


def test_a_rate_that_does_not_parse_is_a_config_error(settings, redis_server):
    with pytest.raises(ConfigError, match="GENQ_RATE_LIMIT"):
        create_app(settings.model_copy(update={"rate_limit": "lots"}))
