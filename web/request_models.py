"""What the API accepts, as pydantic models (bodies and query strings), and the checks every submitted job passes before anything is written.

`validate_job_request` turns a JSON body into a `ValidatedJob` (the model's effective
parameters and one (prompt, seed) per item) or raises a typed error naming the field.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated, Any

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

from shared.errors import InvalidRequest, LimitExceeded, UnknownModel
from shared.registry import ModelSpec, Registry, Task
from shared.states import JobState


def _integral(value: Any) -> Any:
    """JSON Schema counts 3.0 as an integer, and so does this API (3.5 is still refused)."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_integral)]
MAX_SEED = 2**63 - 1
Seed = Annotated[int, Field(ge=0, le=MAX_SEED), BeforeValidator(_integral)]  # bounds first: they reach the schema
# PostgreSQL text cannot hold NUL, and no model needs one.
NO_NUL = r"^[^\x00]*$"
Prompt = Annotated[str, Field(min_length=1, pattern=NO_NUL)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TextParams(_Strict):
    max_new_tokens: Integer = Field(32, ge=1, le=4096)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0, le=100)
    top_k: Integer = Field(0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: Seed | None = None


class ImageParams(_Strict):
    num_inference_steps: Integer = Field(20, ge=1, le=1000)
    guidance_scale: float = Field(7.5, ge=0, le=100)
    width: Integer = Field(512, ge=8, le=4096, multiple_of=8)
    height: Integer = Field(512, ge=8, le=4096, multiple_of=8)
    negative_prompt: Annotated[str, Field(pattern=NO_NUL)] | None = None
    seed: Seed | None = None


class UnconditionalImageParams(_Strict):
    num_inference_steps: Integer = Field(20, ge=1, le=1000)
    seed: Seed | None = None


PARAMS_BY_TASK: dict[Task, type[_Strict]] = {
    Task.TEXT_GENERATION: TextParams,
    Task.TEXT_TO_IMAGE: ImageParams,
    Task.UNCONDITIONAL_IMAGE: UnconditionalImageParams,
}


class InputItem(_Strict):
    prompt: Prompt
    seed: Seed | None = None


class JobRequest(_Strict):
    model: str = Field(min_length=1, max_length=128)
    prompts: list[Prompt] | None = None
    inputs: list[InputItem] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    priority: Integer = Field(5, ge=0, le=9)

    @model_validator(mode="after")
    def _one_input_list(self) -> "JobRequest":
        if (self.prompts is None) == (self.inputs is None):
            raise ValueError("give exactly one of 'prompts' or 'inputs'")
        return self


@dataclass(frozen=True)
class ValidatedJob:
    spec: ModelSpec
    params: dict[str, Any]
    inputs: list[tuple[str, int]]
    priority: int
    field: str  # "prompts" or "inputs": the list the request gave

    def item_path(self, index: int) -> str:
        return item_path(self.field, index)


def item_path(field: str, index: int) -> str:
    """Where item `index`'s prompt is in the request: `prompts.3` or `inputs.3.prompt`."""
    return f"{field}.{index}" + (".prompt" if field == "inputs" else "")


def pydantic_error(exc: ValidationError, prefix: str = "") -> InvalidRequest:
    """The first validation problem as an `InvalidRequest` naming the field's path."""
    first = exc.errors()[0]
    path = ".".join(str(part) for part in (prefix, *first["loc"]) if part != "")
    message = first["msg"]
    return InvalidRequest(f"{path}: {message}" if path else message, field=path or None)


def validate_job_request(body: Any, registry: Registry, settings) -> ValidatedJob:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object", field=None)
    try:
        request = JobRequest.model_validate(body)
    except ValidationError as exc:
        raise pydantic_error(exc) from None
    spec = registry.get(request.model)
    if spec is None:
        raise UnknownModel(f"unknown model {request.model!r}; see GET /v1/models", field="model")
    items = request.inputs if request.inputs is not None else [InputItem(prompt=p) for p in request.prompts]
    field = "inputs" if request.inputs is not None else "prompts"
    _check_items(items, field, settings)
    params = effective_params(spec, request.params)
    return ValidatedJob(spec, params, assign_seeds(items, params.get("seed")), request.priority, field)


def _check_items(items: list[InputItem], field: str, settings) -> None:
    if not items:
        raise InvalidRequest(f"{field} must hold at least one prompt", field=field)
    if len(items) > settings.max_items_per_job:
        raise LimitExceeded(f"{field} holds {len(items)} items; the limit is {settings.max_items_per_job}", field=field)
    for i, item in enumerate(items):
        if len(item.prompt) > settings.max_prompt_chars:
            path = item_path(field, i)
            raise LimitExceeded(f"{path} has {len(item.prompt)} characters; the limit is {settings.max_prompt_chars}", field=path)


def effective_params(spec: ModelSpec, given: dict[str, Any]) -> dict[str, Any]:
    """Registry defaults, overridden by the request, checked by type and by the model's limits."""
    schema = PARAMS_BY_TASK[spec.task]
    merged = {k: v for k, v in spec.defaults.items() if k in schema.model_fields}
    merged.update(given)
    try:
        params = schema.model_validate(merged).model_dump()
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


def assign_seeds(items: list[InputItem], base_seed: int | None) -> list[tuple[str, int]]:
    """Each item's seed: its own, else the job's seed plus its index, else a random one.
    The seed is stored, so every result can be reproduced."""
    rng = random.SystemRandom()
    seeds = []
    for i, item in enumerate(items):
        if item.seed is not None:
            seed = item.seed
        elif base_seed is not None:
            seed = (base_seed + i) % (MAX_SEED + 1)
        else:
            seed = rng.randrange(0, 2**31)
        seeds.append((item.prompt, seed))
    return seeds


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
