"""What the API accepts, as pydantic models (bodies and query strings), and the checks every submitted job passes before anything is written.

`validate_job_request` turns a JSON body into a `ValidatedJob` (the model's effective
parameters and one (prompt, seed) per item) or raises a typed error naming the field.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from shared.errors import InvalidRequest, LimitExceeded, ModelUnavailable, UnknownModel
from shared.items import samples_per_prompt
from shared.model_files import weights_of
from shared.registry import ModelSpec, Registry, Task
from shared.states import JobState
from web.webhook_urls import WEBHOOK_URL_PATTERN


def _integral(value: Any) -> Any:
    """JSON Schema counts 3.0 as an integer, and so does this API (3.5 is still refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_integral)]
MAX_SEED = 2**63 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(_integral)]  # bounds first: they reach the schema
# PostgreSQL text cannot hold NUL, and no model needs one.
NO_NUL = r"^[^\x00]*$"
Prompt = Annotated[str, Field(min_length=1, pattern=NO_NUL)]
MAX_STOP_STRINGS = 4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _refusals_in_schema(schema: dict[str, Any]) -> None:
    """Say in the JSON Schema (and so in the OpenAPI document) what the model validators
    below refuse: both names of a pair (`ONE_OF`), a latent walk with `n` above 1."""
    properties = schema.get("properties", {})
    refused = [{"required": [given, other], "properties": {other: {"not": {"type": "null"}}}}
               for given, other in ONE_OF if given in properties and other in properties]
    if "interpolate" in properties:
        refused += [{"required": ["interpolate", name], "properties": {"interpolate": {"type": "object"},
                                                                       name: {"minimum": 2}}}
                    for name in ("n", "num_return_sequences")]
    if refused:
        schema["allOf"] = [{"not": refusal} for refusal in refused]


class _Samples(_Strict):
    """Several items per prompt: OpenAI's `n`, or transformers' name for it."""

    model_config = ConfigDict(json_schema_extra=_refusals_in_schema)

    n: Integer = Field(1, ge=1, le=128, description="Items per prompt, with consecutive seeds.")
    num_return_sequences: Annotated[int, Field(ge=1, le=128), BeforeValidator(_integral)] | None = Field(
        None, description="transformers' name for `n`.")

    @model_validator(mode="after")
    def _one_name_for_n(self):
        if self.num_return_sequences is not None:
            if "n" in self.model_fields_set:
                raise ValueError("give one of 'n' or 'num_return_sequences' (they are the same)")
            self.n, self.num_return_sequences = self.num_return_sequences, None
        return self


StopString = Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]
StopStrings = Annotated[list[StopString], Field(min_length=1, max_length=MAX_STOP_STRINGS)]


class TextParams(_Samples):
    max_new_tokens: Integer = Field(32, ge=1, le=4096, description="New tokens (or give `max_length`).")
    max_length: Annotated[int, Field(ge=1, le=8192), BeforeValidator(_integral)] | None = Field(
        None, description="Prompt plus new tokens, per item (transformers' meaning); or give `max_new_tokens`.")
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0, le=100)
    top_k: Integer = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0, le=10, description="Divides the scores of tokens the item "
                                      "already holds (prompt included); 1 is off.")
    no_repeat_ngram_size: Integer = Field(0, ge=0, le=64, description="No n-gram of this size occurs twice; 0 is off.")
    stop: StopStrings | StopString | None = Field(None, description="A string or a list of them; an item's "
                                                  "text ends before the first one it produces.")
    seed: Seed | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_length(self):
        if self.max_length is not None:
            if "max_new_tokens" in self.model_fields_set:
                raise ValueError("give one of 'max_new_tokens' or 'max_length'")
            self.max_new_tokens = None
        return self


class ImageParams(_Samples):
    num_inference_steps: Integer = Field(20, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0, le=100)
    width: Integer = Field(512, ge=8, le=4096, multiple_of=8)
    height: Integer = Field(512, ge=8, le=4096, multiple_of=8)
    negative_prompt: Annotated[str, Field(pattern=NO_NUL)] | None = None
    seed: Seed | None = None


class UnconditionalImageParams(_Samples):
    num_inference_steps: Integer = Field(20, ge=1, le=1000)
    seed: Seed | None = None


class Interpolation(_Strict):
    """A latent walk: `steps` items per prompt, from `from_seed`'s latent to `to_seed`'s."""

    from_seed: Seed
    to_seed: Seed
    steps: Integer = Field(ge=2, le=256)


class GeneratorImageParams(_Samples):
    """A GAN or VAE decoder: a seeded latent (and the class the prompt names) to an image."""

    width: Integer = Field(64, ge=8, le=4096, multiple_of=8, description="Output size (the sample is upscaled).")
    height: Integer = Field(64, ge=8, le=4096, multiple_of=8)
    interpolate: Interpolation | None = Field(None, description="A latent walk per prompt, each step an item.")
    seed: Seed | None = None

    @model_validator(mode="after")
    def _walk_or_samples(self):
        if self.interpolate is not None and self.n > 1:
            raise ValueError("give one of 'interpolate' or 'n' (a walk's items are its steps)")
        return self


PARAMS_BY_TASK: dict[Task, type[_Strict]] = {
    Task.TEXT_GENERATION: TextParams,
    Task.TEXT_TO_IMAGE: ImageParams,
    Task.UNCONDITIONAL_IMAGE: UnconditionalImageParams,
    Task.GAN_IMAGE: GeneratorImageParams,
    Task.VAE_IMAGE: GeneratorImageParams,
}
# Pairs of parameters of which a request gives one: the one it gives replaces a registry
# default for the other. The first name of an alias pair is the one stored.
ONE_OF = (("n", "num_return_sequences"), ("max_new_tokens", "max_length"))
ALIASES = {"num_return_sequences"}


class InputItem(_Strict):
    prompt: Prompt
    seed: Seed | None = None


class WebhookRequest(_Strict):
    """Where the job's final event is POSTed, signed per Standard Webhooks (README: Webhooks)."""

    url: str = Field(min_length=1, max_length=2048, pattern=WEBHOOK_URL_PATTERN,
                     description="An http(s) URL; internal addresses are refused (403) unless "
                     "GENQ_WEBHOOK_ALLOW_PRIVATE, and hosts off GENQ_WEBHOOK_ALLOWED_HOSTS when it is set.")
    events: list[Literal["job.completed", "job.failed", "job.cancelled"]] | None = Field(
        None, min_length=1, description="Which final events to send; all three when left out.")


class JobRequest(_Strict):
    model: str = Field(min_length=1, max_length=128)
    prompts: list[Prompt] | None = None
    inputs: list[InputItem] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Integer = Field(5, ge=0, le=9)
    webhook: WebhookRequest | None = Field(None, description="Call this URL when the job ends.")

    @model_validator(mode="after")
    def _one_input_list(self) -> "JobRequest":
        if (self.prompts is None) == (self.inputs is None):
            raise ValueError("give exactly one of 'prompts' or 'inputs'")
        return self


@dataclass(frozen=True)
class ValidatedJob:
    spec: ModelSpec
    params: dict[str, Any]
    inputs: list[tuple[str, int]]  # one per item: each prompt `per_prompt` times in a row
    priority: int
    field: str  # "prompts" or "inputs": the list the request gave
    per_prompt: int = 1
    webhook: WebhookRequest | None = None

    def item_path(self, index: int) -> str:
        """Where item `index`'s prompt is in the request."""
        return item_path(self.field, index // self.per_prompt)


def item_path(field: str, index: int) -> str:
    """Where prompt `index` is in the request: `prompts.3` or `inputs.3.prompt`."""
    return f"{field}.{index}" + (".prompt" if field == "inputs" else "")


def pydantic_error(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    """The first validation problem as an `InvalidRequest` naming the field's path."""
    first = exc.errors()[0]
    path = ".".join(str(part) for part in (prefix, *first["loc"]) if part != "")
    message = first["msg"]
    return InvalidRequest(f"{path}: {message}" if path else message, field=path or None)


def validate_job_request(body: Any, registry: Registry, settings, params_memo: dict | None = None) -> ValidatedJob:
    """`params_memo` (a dict the caller keeps) lets many requests with the same model and
    parameters, like a batch file's lines, check those parameters once."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", field=None)
    try:
        request = JobRequest.model_validate(body)
    except ValidationError as exc:
        raise pydantic_error(exc) from None
    spec = registry.get(request.model)
    if spec is None:
        raise UnknownModel(f"unknown model {request.model!r}; see GET /v1/models", field="model")
    refuse_unavailable(spec)
    items = request.inputs if request.inputs is not None else [InputItem(prompt=p) for p in request.prompts]
    field = "inputs" if request.inputs is not None else "prompts"
    _check_items(items, field, settings)
    params = memo_params(spec, request.params, params_memo)
    per_prompt = samples_per_prompt(params)
    _check_item_count(len(items), per_prompt, field, settings)
    walk = params.get("interpolate")
    if walk is not None:
        return ValidatedJob(spec, params, walk_inputs(items, field, walk), request.priority, field, per_prompt,
                            request.webhook)
    return ValidatedJob(spec, params, assign_seeds(items, params.get("seed"), per_prompt), request.priority, field,
                        per_prompt, request.webhook)


AVAILABLE_FOR_SECONDS = 10.0  # how long a submit trusts a model's weights found present (a Hub id scans the cache)
_available_since: dict[str, float] = {}


def refuse_unavailable(spec: ModelSpec) -> None:
    """A model whose weights this deployment lacks cannot run a job: refuse it now rather
    than accept items that could only fail. Weights found present are trusted for a few
    seconds, so a burst of submits does not scan the Hugging Face cache each time."""
    found = _available_since.get(spec.name)
    if found is not None and time.monotonic() - found < AVAILABLE_FOR_SECONDS:
        return
    weights = weights_of(spec)
    if weights.available:
        _available_since[spec.name] = time.monotonic()
    else:
        _available_since.pop(spec.name, None)
        raise ModelUnavailable(f"model {spec.name!r} is not available: {weights.reason}; see GET /v1/models",
                               field="model")


def _check_items(items: list[InputItem], field: str, settings) -> None:
    if not items:
        raise InvalidRequest(f"{field} must hold at least one prompt", field=field)
    if len(items) > settings.max_items_per_job:
        raise LimitExceeded(f"{field} holds {len(items)} items; the limit is {settings.max_items_per_job}", field=field)
    for i, item in enumerate(items):
        if len(item.prompt) > settings.max_prompt_chars:
            path = item_path(field, i)
            raise LimitExceeded(f"{path} has {len(item.prompt)} characters; the limit is {settings.max_prompt_chars}", field=path)


def _check_item_count(prompts: int, per_prompt: int, field: str, settings) -> None:
    """The item limit counts items: prompts times the items each prompt becomes."""
    if prompts * per_prompt > settings.max_items_per_job:
        raise LimitExceeded(f"{field} holds {prompts} prompts of {per_prompt} items each, {prompts * per_prompt} "
                            f"items; the limit is {settings.max_items_per_job}", field=field)


def memo_params(spec: ModelSpec, given: dict[str, Any], memo: dict | None) -> dict[str, Any]:
    """`effective_params`, looked up in `memo` first when the given values can key it (a
    copy: the caller may change its own). Values are keyed with their types (`True` is
    `1` to a dict, not to the checks). Errors are not kept: a bad set fails each time."""
    key = (spec.name, tuple(sorted((name, type(value), value) for name, value in given.items())))
    try:
        hash(key)
    except TypeError:  # a list or an object among the values
        memo = None
    if memo is None:
        return effective_params(spec, given)
    if key not in memo:
        memo[key] = effective_params(spec, given)
    return dict(memo[key])


def effective_params(spec: ModelSpec, given: dict[str, Any]) -> dict[str, Any]:
    """Registry defaults, overridden by the request, checked by type and by the model's limits."""
    schema = PARAMS_BY_TASK[spec.task]
    merged = {k: v for k, v in spec.defaults.items() if k in schema.model_fields}
    for pair in ONE_OF:  # a request that names one of a pair replaces the default of the other
        if any(name in given for name in pair):
            for name in pair:
                merged.pop(name, None)
    merged.update(given)
    try:
        params = schema.model_validate(merged).model_dump(exclude=ALIASES)
    except ValidationError as exc:
        raise pydantic_error(exc, prefix="params") from None
    for name, bounds in spec.limits.items():
        value = params.get(name)
        if value is None:
            continue
        if bounds.min is not None and value < bounds.min:
            raise LimitExceeded(f"params.{name} is {value}; {spec.name} allows at least {bounds.min:g}", field=f"params.{name}")
        if bounds.max is not None and value > bounds.max:
            raise LimitExceeded(f"params.{name} is {value}; {spec.name} allows at most {bounds.max:g}", field=f"params.{name}")
    return params


def assign_seeds(items: list[InputItem], base_seed: int | None, per_prompt: int = 1) -> list[tuple[str, int]]:
    """Each item's seed: its prompt's own seed, else the job's seed plus its index, else a
    random one; the `per_prompt` samples of a prompt take consecutive seeds from there.
    The seed is stored, so every result can be reproduced."""
    rng = random.SystemRandom()
    seeds = []
    for i, item in enumerate(items):
        if item.seed is not None:
            first = item.seed
        elif base_seed is not None:
            first = base_seed + i * per_prompt
        else:
            first = rng.randrange(0, 2**31)
        seeds.extend((item.prompt, (first + sample) % (MAX_SEED + 1)) for sample in range(per_prompt))
    return seeds


def walk_inputs(items: list[InputItem], field: str, walk: dict[str, Any]) -> list[tuple[str, int]]:
    """A latent walk's items: `steps` per prompt, each stored with the walk's `from_seed`
    (its output follows from both seeds and its step, which its index gives)."""
    for i, item in enumerate(items):
        if item.seed is not None:
            raise InvalidRequest(f"{field}.{i}.seed: a latent walk takes its seeds from params.interpolate",
                                 field=f"{field}.{i}.seed")
    return [(item.prompt, walk["from_seed"]) for item in items for _ in range(walk["steps"])]


class _PageQuery(BaseModel):
    """A query string. Unknown parameters are ignored; values arrive as text and are
    parsed (lax mode). The page size's bounds are the deployment's settings."""

    model_config = ConfigDict(extra="ignore")
    limit: int | None = Field(None, ge=1, validate_default=True)

    @field_validator("limit")
    @classmethod
    def _within_page_size(cls, value: int | None, info: ValidationInfo) -> int:
        settings = info.context["settings"]
        if value is None:
            return settings.default_page_size
        if value > settings.max_page_size:  # worded as pydantic words its own bounds
            raise PydanticCustomError("less_than_equal", "Input should be less than or equal to {le}",
                                      {"le": settings.max_page_size})
        return value


class JobListQuery(_PageQuery):
    state: JobState | None = None
    cursor: str | None = None


class ItemPageQuery(_PageQuery):
    offset: int = Field(0, ge=0, le=10**9)


def validate_query(model: type[_PageQuery], args: Any, settings) -> Any:
    """`request.args` through `model`, or an `InvalidRequest` naming the parameter."""
    try:
        return model.model_validate(args.to_dict(), context={"settings": settings})
    except ValidationError as exc:
        raise pydantic_error(exc) from None
