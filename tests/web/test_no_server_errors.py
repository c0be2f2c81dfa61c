"""No request gets a 5xx while the database and Redis are up, whatever its bytes.

Hypothesis sends arbitrary requests to every route of the app (every rule of the URL
map, every method): path segments, query strings and header values of any characters,
and bodies that are arbitrary JSON (deep, wide, huge and negative numbers, floats, every
code point including lone surrogates and NUL, duplicate keys), job requests close enough
to valid to reach the code behind validation, and raw bytes that are not UTF-8. Each
answer must be below 500 and carry the error envelope when it is an error. On SQLite
and PostgreSQL, against the app in process (the same WSGI app gunicorn serves).

`GENQ_FUZZ_EXAMPLES` sends more (the suite's figure is deterministic); what a run finds
is kept as a case in `test_known_breakers_answer_4xx`.
"""
from __future__ import annotations

import json
import os
import re
from urllib.parse import quote

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from tests.web.conftest import make_key
from web.app import create_app

EXAMPLES = int(os.environ.get("GENQ_FUZZ_EXAMPLES", "400"))
MODELS = ["tiny-text", "tiny-sd", "tiny-uncond"]
PARAM_NAMES = ["max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "seed", "num_inference_steps",
               "guidance_scale", "width", "height", "negative_prompt"]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
ODD_CHARACTERS = ["\x00", "\ud800", "\udfff", "\udbff\udc00", "\uffff", "\U0010ffff", "\u202e", "\x7f", "\n", "%", "/", "..", "\\"]

# --- strategies ----------------------------------------------------------------------
any_text = st.lists(st.one_of(st.characters(), st.sampled_from(ODD_CHARACTERS)), max_size=40).map("".join)
huge_ints = st.one_of(st.integers(), st.sampled_from([2**63 - 1, 2**63, -2**63 - 1, 2**64, 10**30, -10**30, 10**4000]))
floats = st.floats(allow_nan=True, allow_infinity=True)
scalars = st.one_of(st.none(), st.booleans(), huge_ints, floats, any_text)
any_json = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(any_text, inner, max_size=5)), max_leaves=25)
params = st.dictionaries(st.one_of(st.sampled_from(PARAM_NAMES), any_text), st.one_of(scalars, any_json), max_size=6)
job_like = st.fixed_dictionaries(
    {"model": st.one_of(st.sampled_from(MODELS), any_json)},
    optional={
        "prompts": st.one_of(st.lists(any_text, max_size=4), any_json),
        "inputs": st.one_of(st.lists(st.fixed_dictionaries({"prompt": any_text}, optional={"seed": huge_ints}),
                                     max_size=3), any_json),
        "params": st.one_of(params, any_json),
        "priority": st.one_of(huge_ints, any_json),
    },
).flatmap(lambda body: st.dictionaries(any_text, any_json, max_size=2).map(lambda extra: {**extra, **body}))

valid_text = st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=30)
nearly_valid = st.fixed_dictionaries(  # most of these are accepted: odd text and numbers reach the database
    {"model": st.sampled_from(MODELS), "prompts": st.lists(valid_text, min_size=1, max_size=3)},
    optional={"params": st.fixed_dictionaries({}, optional={"seed": huge_ints, "max_new_tokens": st.integers(-5, 40)}),
              "priority": st.integers(-2, 12)},
)


def _json_bytes(value) -> bytes:
    # allow_nan: NaN/Infinity are what a careless client sends; ensure_ascii keeps lone
    # surrogates as \ud800 escapes (valid JSON text, but not a Unicode scalar value).
    return json.dumps(value, allow_nan=True).encode()


deep = st.integers(1, 200_000).map(lambda depth: b"[" * depth + b"]" * depth)
deep_objects = st.integers(1, 50_000).map(lambda depth: b'{"a":' * depth + b"1" + b"}" * depth)
duplicate_keys = st.tuples(any_json, any_json).map(lambda pair: b'{"model": %s, "model": %s, "prompts": ["x"]}' % (
    _json_bytes(pair[0]), _json_bytes(pair[1])))
bodies = st.one_of(
    st.none(),
    job_like.map(_json_bytes),
    any_json.map(_json_bytes),
    st.binary(max_size=200),
    deep, deep_objects, duplicate_keys,
    st.sampled_from([b"\xff\xfe{", b'{"model": "tiny-text", "prompts": ["\xff"]}', b"1e999999", b"-" + b"9" * 5000,
                     b'{"model":"tiny-text","prompts":["\\ud800"]}', b'"\\u0000"', b"[" * 10 + b"1e400" + b"]" * 10]),
)
segments = st.one_of(any_text, st.sampled_from(["0", "-1", str(2**63), str(10**40), "9" * 5000, "a" * 32, "0" * 32]))
header_values = st.text(st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=60)  # HTTP/1.1: ISO-8859-1
headers = st.dictionaries(
    st.sampled_from(["Idempotency-Key", "Content-Type", "Accept", "Last-Event-ID", "X-Anything", "Origin"]),
    header_values, max_size=3)
queries = st.dictionaries(st.one_of(st.sampled_from(["limit", "offset", "state", "cursor"]), any_text),
                          st.one_of(any_text, huge_ints.map(str)), max_size=3)


def route_paths(app) -> list[tuple[str, list[str], list[str]]]:
    """Every rule with its variables and methods, for filling in with generated values."""
    return sorted((rule.rule, sorted(rule.arguments), sorted(rule.methods)) for rule in app.url_map.iter_rules())


@st.composite
def requests_for(draw, rules, real_job_ids):
    """Any route; half of them submits, whose bodies reach the deepest code."""
    submit = ("/v1/jobs", [], ["POST"])
    rule, arguments, methods = draw(st.one_of(st.just(submit), st.sampled_from(rules)))
    path = rule
    for name in arguments:
        value = draw(st.one_of(segments, st.sampled_from(real_job_ids)) if name == "job_id" else segments)
        path = re.sub(rf"<(\w+:)?{name}>", quote(value.encode("utf-8", "surrogatepass"), safe=""), path)
    query = "&".join(f"{quote(k.encode('utf-8', 'surrogatepass'), safe='')}="
                     f"{quote(v.encode('utf-8', 'surrogatepass'), safe='')}" for k, v in draw(queries).items())
    return {
        "method": draw(st.one_of(st.sampled_from(methods), st.sampled_from(methods), st.sampled_from(METHODS))),
        "path": path + ("?" + query if query else ""),
        "headers": draw(headers),
        "body": draw(st.one_of(job_like.map(_json_bytes), nearly_valid.map(_json_bytes), bodies) if rule == "/v1/jobs" else bodies),
    }


# --- the test --------------------------------------------------------------------------
@pytest.fixture
def fuzz_app(settings, redis_server):
    redis_server.client().flushdb()
    return create_app(settings.model_copy(update={"rate_limit": "1000000/minute"}))


def send(client, key: str, request: dict):
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **request["headers"]}
    return client.open(request["path"], method=request["method"], headers=headers, data=request["body"])


OPENAI_PATHS = ("/v1/files", "/v1/batches")


def assert_not_a_server_error(request: dict, response) -> None:
    shown = {**request, "body": request["body"] if request["body"] is None or len(request["body"]) < 300
             else request["body"][:100] + b"...(%d bytes)" % len(request["body"])}
    assert response.status_code < 500, f"{response.status_code} for {shown!r}: {response.get_data()[:300]!r}"
    if response.status_code == 405:
        assert response.headers.get("Allow"), shown  # RFC 9110: a 405 says what is allowed
    if response.status_code >= 400 and request["method"] != "HEAD":
        error = response.get_json(silent=True)
        envelopes = [{"code", "message", "field"}]
        if request["path"].startswith(OPENAI_PATHS):  # the OpenAI-compatible routes answer in OpenAI's envelope
            envelopes.append({"message", "type", "param", "code"})
        assert error and set(error["error"]) in envelopes, (shown, response.get_data()[:300])


def test_no_generated_request_gets_a_server_error(fuzz_app, settings):
    key = make_key(settings, "fuzz")
    client = fuzz_app.test_client()
    accepted = client.post("/v1/jobs", json={"model": "tiny-text", "prompts": ["a", "b"]},
                           headers={"Authorization": f"Bearer {key}"})
    assert accepted.status_code == 202
    rules = route_paths(fuzz_app)
    sent = []

    @settings_for_fuzzing
    @given(requests_for(rules, [accepted.json["id"]]))
    def one_request(request):
        response = send(client, key, request)
        sent.append(response.status_code)
        assert_not_a_server_error(request, response)

    one_request()
    print(f"\n{len(sent)} requests to {len(rules)} routes, {sum(s >= 500 for s in sent)} server errors; "
          f"statuses {dict(sorted((s, sent.count(s)) for s in set(sent)))}")


settings_for_fuzzing = settings(
    max_examples=EXAMPLES, deadline=None, database=None, derandomize="GENQ_FUZZ_EXAMPLES" not in os.environ,
    suppress_health_check=list(HealthCheck),
)

# What the fuzzing found, kept as cases (each was a 500 before it was fixed).
KNOWN_BREAKERS = [
    ("POST", "/v1/jobs", b"[" * 100_000 + b"]" * 100_000),  # the JSON decoder's recursion limit
    ("POST", "/v1/jobs", b'{"model": "tiny-text", "prompts": ["\\ud800"]}'),  # a lone surrogate
    ("POST", "/v1/jobs", b'{"model": "tiny-text", "inputs": [{"prompt": "x\\udfff"}]}'),
    ("GET", "/v1/jobs/{job}/items/%d/output" % 2**63, None),  # beyond the column's integer
    ("GET", "/v1/jobs/{job}/items/%s/output" % ("9" * 5000), None),  # beyond int()'s digit limit
]


@pytest.mark.parametrize("method,path,body", KNOWN_BREAKERS, ids=lambda v: repr(v)[:40])
def test_known_breakers_answer_4xx(fuzz_app, settings, method, path, body):
    key = make_key(settings, "fuzz")
    client = fuzz_app.test_client()
    job = send(client, key, {"method": "POST", "path": "/v1/jobs", "headers": {},
                             "body": b'{"model": "tiny-text", "prompts": ["a"]}'}).json["id"]
    request = {"method": method, "path": path.replace("{job}", job), "headers": {}, "body": body}
    response = send(client, key, request)
    assert 400 <= response.status_code < 500
    assert_not_a_server_error(request, response)
