"""A batch input file, line by line, into genq jobs, or into the errors that fail it.

Each line is `{custom_id, method: "POST", url, body}`. The body (OpenAI's, for the
batch's endpoint) is mapped to a genq job request, `{"model", "inputs", "params"}`,
and goes through `validate_job_request` and the prompt token limits: the very checks
of POST /v1/jobs, so a batch line and a submitted job meet the same limits. Their
errors come back with the OpenAI parameter they concern (`params.max_new_tokens` is
`body.max_tokens`).

Mapping: `max_tokens` (chat: or `max_completion_tokens`) is `max_new_tokens`;
`temperature: 0` is greedy decoding, another temperature or a `top_p` samples; when
neither is given the model's registry defaults decide. `n` is n consecutive items of
one job with consecutive seeds (`seed`, else a random one, plus 0..n-1); a completion's
`prompt` may be a list of strings, n items per prompt; `stop` cuts
each text at the first stop string. Chat messages are rendered with the model's chat
template; a model without one is a line error (`model_has_no_chat_template`). Images:
`size` "WxH" is width and height; only `b64_json` answers (genq serves no image URLs);
`seed` is accepted as a genq extension.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Annotated, Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import openai_shapes as shapes
from shared.chat_templates import ChatTemplateError, NoChatTemplate, render_chat
from shared.errors import GenqError
from shared.openai_batches import JobPlan, RequestPlan
from shared.registry import ModelSpec, Task
from web.bodies import refuse_lone_surrogates
from web.request_models import MAX_SEED, validate_job_request

MAX_LISTED_ERRORS = 100  # the batch's errors list names this many lines, then how many more
MAX_CUSTOM_ID = 512


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


Stop = str | Annotated[list[str], Field(min_length=1, max_length=4)] | None


class _TextBody(_Body):
    model: str = Field(min_length=1, max_length=128)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = None
    seed: int | None = None
    n: int = Field(1, ge=1)
    stop: Stop = None
    user: str | None = None
    stream: Literal[False] | None = None


class CompletionBody(_TextBody):
    prompt: str | Annotated[list[str], Field(min_length=1)]  # a list: each prompt its own n choices
    max_tokens: int | None = None


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def as_template_message(self) -> dict[str, Any]:
        content = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return {"role": self.role, "content": content, **({"name": self.name} if self.name else {})}


class ChatBody(_TextBody):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


class ImageBody(_Body):
    model: str = Field(min_length=1, max_length=128)
    prompt: str
    n: int = Field(1, ge=1)
    size: str | None = Field(None, pattern=r"^[0-9]{1,5}x[0-9]{1,5}$")
    response_format: Literal["b64_json"] | None = None
    seed: int | None = None
    user: str | None = None


BODIES = {shapes.COMPLETIONS: CompletionBody, shapes.CHAT_COMPLETIONS: ChatBody, shapes.IMAGES: ImageBody}


class LineError(Exception):
    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass
class BatchPlan:
    jobs: list[JobPlan] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0

    @property
    def items(self) -> int:
        return sum(len(job.requests) * job.n for job in self.jobs)

    @property
    def models(self) -> set[str]:
        return {job.model for job in self.jobs}


def plan_batch(lines: Iterable[tuple[int, bytes]], endpoint: str, registry, settings, token_limits) -> BatchPlan:
    """Every line checked before anything runs; lines that can share a genq job grouped."""
    plan, groups, seen, failed, params_memo = BatchPlan(), {}, set(), 0, {}
    for number, raw in lines:
        if not raw.strip():
            continue
        plan.requests += 1
        if plan.requests > settings.batch_max_requests:
            plan.errors.append(error_entry(number, LineError(
                "too_many_requests", f"the file holds more than {settings.batch_max_requests} requests "
                "(GENQ_BATCH_MAX_REQUESTS)")))
            break
        try:
            key, job, request = check_line(number, raw, endpoint, seen, registry, settings, token_limits, params_memo)
        except LineError as exc:
            failed += 1
            if failed <= MAX_LISTED_ERRORS:
                plan.errors.append(error_entry(number, exc))
            continue
        if not failed:
            groups.setdefault(key, job).requests.append(request)
    if failed > MAX_LISTED_ERRORS:
        plan.errors.append(error_entry(None, LineError("too_many_errors",
                                                       f"{failed - MAX_LISTED_ERRORS} more lines have errors")))
    if plan.requests == 0:
        plan.errors.append(error_entry(None, LineError("empty_file", "the file holds no requests")))
    plan.jobs = [] if plan.errors else list(groups.values())
    return plan


def error_entry(line: int | None, exc: LineError) -> dict[str, Any]:
    """An entry of the batch's `errors.data` (`line` None: about the whole file)."""
    return {"code": exc.code, "line": line, "message": exc.message, "param": exc.param}


def check_line(number: int, raw: bytes, endpoint: str, seen: set[str], registry, settings,
               token_limits, params_memo: dict | None = None) -> tuple[tuple, JobPlan, RequestPlan]:
    line = parse_line(raw)
    custom_id, url, body = line.get("custom_id"), line.get("url"), line.get("body")
    extra = set(line) - {"custom_id", "method", "url", "body"}
    if extra:
        raise LineError("invalid_request", f"unknown field {sorted(extra)[0]!r}", sorted(extra)[0])
    if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= MAX_CUSTOM_ID:
        raise LineError("invalid_request", f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters",
                        "custom_id")
    if custom_id in seen:
        raise LineError("duplicate_custom_id", f"custom_id {custom_id!r} is already used by an earlier line",
                        "custom_id")
    seen.add(custom_id)
    if line.get("method") != "POST":
        raise LineError("invalid_request", "method must be 'POST'", "method")
    if url != endpoint:
        raise LineError("mismatched_url", f"url {url!r} is not the batch's endpoint {endpoint!r}", "url")
    if not isinstance(body, dict):
        raise LineError("invalid_request", "body must be a JSON object", "body")
    spec, job_body, shaping, n = genq_job_body(endpoint, body, registry, settings)
    try:
        validated = validate_job_request(job_body, registry, settings, params_memo)
        prompt_tokens = token_limits.check(validated)
    except GenqError as exc:
        raise line_error_of(exc, endpoint, body) from None
    params = {name: value for name, value in validated.params.items() if name != "seed"}
    if shaping is not None and "max_new_tokens" in params:
        shaping["max_tokens"] = params["max_new_tokens"]
    if shaping is not None and prompt_tokens:  # counted once here, not again for the output's usage
        shaping["prompt_tokens"] = sum(prompt_tokens[::shaping.get("per_prompt") or len(prompt_tokens)])
    key = (spec.name, n, json.dumps(params, sort_keys=True))
    return (key, JobPlan(spec.name, spec.task.value, params, n),
            RequestPlan(number, custom_id, list(validated.inputs), shaping))


def parse_line(raw: bytes) -> dict[str, Any]:
    try:
        line = json.loads(raw)  # strict UTF-8: a surrogate can only arrive as a \u escape
        if b"\\ud" in raw.lower():
            refuse_lone_surrogates(line)
    except (ValueError, RecursionError, GenqError):
        raise LineError("invalid_json_line", "the line is not valid JSON (UTF-8, one object per line)") from None
    if not isinstance(line, dict):
        raise LineError("invalid_json_line", "the line must be a JSON object")
    return line


def genq_job_body(endpoint: str, body: dict, registry, settings) -> tuple[ModelSpec, dict, dict | None, int]:
    """(the model, the genq job request, what shaping the answer needs, the request's
    items). A completion's `prompt` may be a list, as OpenAI allows: n items of each
    prompt, in order, so choice `i * n + j` is sample j of prompt i (OpenAI's `index`),
    each prompt with the same seeds (the answer to a prompt does not depend on its place)."""
    try:
        request = BODIES[endpoint].model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(part) for part in ("body", *first["loc"]) if not _union_branch(part))
        message = f"{param}: {first['msg']}"
        if first["loc"][:1] == ("prompt",) and endpoint == shapes.COMPLETIONS:
            param, message = "body.prompt", "body.prompt must be a string or a non-empty list of strings"
        raise LineError("invalid_request", message, param) from None
    spec = registry.get(request.model)
    if spec is None:
        raise LineError("model_not_found", f"unknown model {request.model!r}; see GET /v1/models", "body.model")
    wants_text = endpoint in shapes.TEXT_ENDPOINTS
    if (spec.task is Task.TEXT_GENERATION) != wants_text:
        raise LineError("invalid_request", f"model {spec.name!r} is a {spec.task.value} model; {endpoint} takes "
                        f"{'a text-generation' if wants_text else 'an image'} model", "body.model")
    prompts = getattr(request, "prompt", None)
    listed = isinstance(prompts, list)
    total = request.n * (len(prompts) if listed else 1)
    if total > settings.max_items_per_job:
        what = f"{len(prompts)} prompts x n {request.n}" if listed else f"body.n is {request.n}"
        raise LineError("limit_exceeded", f"{what}: a job holds at most {settings.max_items_per_job} items "
                        "(GENQ_MAX_ITEMS_PER_JOB)", "body.prompt" if listed else "body.n")
    if endpoint == shapes.IMAGES:
        return spec, {"model": spec.name, "inputs": items(request.prompt, request.seed, request.n),
                      "params": image_params(request)}, None, total
    if endpoint == shapes.CHAT_COMPLETIONS:
        prompts = [chat_prompt(spec, request)]
    elif not listed:
        prompts = [prompts]
    stop = [request.stop] if isinstance(request.stop, str) else request.stop
    shaping = {"stop": stop, **({"per_prompt": request.n} if listed else {})}
    seed = random.SystemRandom().randrange(0, 2**31) if request.seed is None else request.seed
    return spec, {"model": spec.name, "inputs": [item for prompt in prompts for item in items(prompt, seed, request.n)],
                  "params": text_params(request)}, shaping, total


def _union_branch(part) -> bool:
    """A location part that names which type of a union pydantic tried (`str`,
    `list[str]`), not a field: it is no parameter of the request."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "none") or "[" in part)


def chat_prompt(spec: ModelSpec, request: ChatBody) -> str:
    try:
        return render_chat(spec, [message.as_template_message() for message in request.messages])
    except NoChatTemplate as exc:
        raise LineError("model_has_no_chat_template", str(exc), "body.model") from None
    except ChatTemplateError as exc:
        raise LineError("invalid_request", str(exc), "body.messages") from None


def items(prompt: str, seed: int | None, n: int) -> list[dict[str, Any]]:
    """n items of one prompt with consecutive seeds (wrapping within the seed range)."""
    base = random.SystemRandom().randrange(0, 2**31) if seed is None else seed
    seeds = [(base + k) % (MAX_SEED + 1) if 0 <= base <= MAX_SEED else base for k in range(n)]
    return [{"prompt": prompt, "seed": value} for value in seeds]


def text_params(request: CompletionBody | ChatBody) -> dict[str, Any]:
    params: dict[str, Any] = {}
    max_tokens = getattr(request, "max_completion_tokens", None) or request.max_tokens
    if max_tokens is not None:
        params["max_new_tokens"] = max_tokens
    if request.temperature == 0:
        params["do_sample"] = False
    elif request.temperature is not None or request.top_p is not None:
        params["do_sample"] = True
        if request.temperature is not None:
            params["temperature"] = request.temperature
    if request.top_p is not None:
        params["top_p"] = request.top_p
    return params


def image_params(request: ImageBody) -> dict[str, Any]:
    if request.size is None:
        return {}
    width, height = (int(value) for value in request.size.split("x"))
    return {"width": width, "height": height}


# Where a genq parameter came from in an OpenAI body.
PARAM_OF = {"max_new_tokens": "max_tokens", "do_sample": "temperature", "width": "size", "height": "size"}


def openai_param(genq_field: str | None, endpoint: str, body: dict) -> str | None:
    if not genq_field:
        return None
    parts = genq_field.split(".")
    if parts[0] == "params" and len(parts) > 1:
        name = PARAM_OF.get(parts[1], parts[1])
        if name == "max_tokens" and "max_completion_tokens" in body:
            name = "max_completion_tokens"
        return f"body.{name}"
    if parts[0] in ("inputs", "prompts"):
        if len(parts) == 1:
            return "body.n"
        if parts[-1] == "seed":
            return "body.seed"
        return "body.messages" if endpoint == shapes.CHAT_COMPLETIONS else "body.prompt"
    return f"body.{genq_field}"


def line_error_of(exc: GenqError, endpoint: str, body: dict) -> LineError:
    param = openai_param(exc.field, endpoint, body)
    message = exc.message
    if exc.field and param and message.startswith(exc.field):
        message = param + message[len(exc.field):]
    return LineError(exc.code, message, param)
