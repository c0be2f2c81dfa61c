"""GENQ_RATE_LIMIT: requests per API key, counted in Redis, over every limited route."""
from __future__ import annotations

import pytest

from genq.devstack import free_port
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


def redis_calls(redis_server, command: str) -> int:
    stats = redis_server.client().info("commandstats").get(f"cmdstat_{command}", {})
    return stats.get("calls", 0)


def test_a_process_takes_a_block_of_requests_from_redis_and_spends_it_without_asking(settings, redis_server, api_key):
    client = limited_client(settings.model_copy(update={"rate_limit_block": 16}), api_key, "100000/hour")
    before = redis_calls(redis_server, "incrby")
    assert all(client.get("/v1/jobs").status_code == 200 for _ in range(40))
    assert redis_calls(redis_server, "incrby") - before == 3  # blocks of 16: 16 + 16 + 8 of the third


def test_blocks_taken_by_several_processes_never_admit_more_than_the_rate(settings, redis_server, api_key):
    blocked = settings.model_copy(update={"rate_limit_block": 16})
    clients = [limited_client(blocked, api_key, "200/hour") for _ in range(3)]
    admitted = 0
    for turn in range(300):  # the processes in turn, until each has been refused
        admitted += clients[turn % 3].get("/v1/jobs").status_code == 200
    # each asks again only once its own block is spent, so in the end every request
    # of the window was admitted by one of them, and none more
    assert admitted == 200


def test_near_the_limit_blocks_shrink_so_little_is_held_where_it_is_not_spent(settings, redis_server, api_key):
    blocked = settings.model_copy(update={"rate_limit_block": 16})
    busy, idle = limited_client(blocked, api_key, "200/hour"), limited_client(blocked, api_key, "200/hour")
    assert idle.get("/v1/jobs").status_code == 200  # takes a block of 12 (200 / 16), spends one
    admitted_busy = 0
    while busy.get("/v1/jobs").status_code == 200:
        admitted_busy += 1
    assert admitted_busy == 200 - 12  # the idle process holds 11: the rest went to the busy one
    assert sum(idle.get("/v1/jobs").status_code == 200 for _ in range(20)) == 11


def test_without_redis_requests_are_not_limited(settings, api_key):
    client = limited_client(settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}),
                            api_key, "1/hour")
    assert [client.get("/v1/jobs").status_code for _ in range(3)] == [200, 200, 200]
