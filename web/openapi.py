"""The OpenAPI 3.1 document, built from the operations declared beside the views
(`web.operations`) and the pydantic models that validate requests (`web.request_models`)
and build responses (`web.response_models`). Nothing here is written by hand beside
those models: each schema comes from `model_json_schema` (through `models_json_schema`,
which collects every model's `$defs` into one `components.schemas` and names each model
once).
"""
from __future__ import annotations

import copy
from functools import lru_cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from shared.registry import ModelSpec, Registry
from shared.settings import Settings
from web.api import api
from web.archive import get_job_archive  # noqa: F401 (adds GET /v1/jobs/<id>/archive to `api`)
from web.events import events
from web.health import health
from web.job_removal import removal
from web.openai_batches import batches
from web.openai_files import files
from web.operations import Operation, Param, Reply
from web.request_models import ALIASES, ONE_OF, PARAMS_BY_TASK, JobRequest
from web.response_models import EVENT_MODELS
from web.webhook_views import webhooks
from web.workers import list_workers  # noqa: F401 (adds GET /v1/workers to `api`)

OPENAPI_VERSION = "3.1.0"
REF_TEMPLATE = "#/components/schemas/{model}"
JSON = "application/json"
SECURITY_SCHEME = "bearerAuth"
DOCUMENTED_BLUEPRINTS = (api, removal, events, webhooks, files, batches, health)
ALIAS_OF = {name: alias for name, alias in ONE_OF if alias in ALIASES}  # a parameter's other name
PARAMS_MODELS: tuple[type[BaseModel], ...] = tuple(dict.fromkeys(PARAMS_BY_TASK.values()))  # one per model class


def operations() -> list[Operation]:
    """Every documented operation, in the order the views are declared."""
    return [op for blueprint in DOCUMENTED_BLUEPRINTS for op in blueprint.operations]


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=model.__name__)}


def referenced_models() -> list[type[BaseModel]]:
    """Every model the operations name, once each, in a stable order."""
    seen: dict[type[BaseModel], None] = {}
    for route in operations():
        if route.request is not None:
            seen[route.request] = None
        for reply in route.responses.values():
            if reply.model is not None:
                seen[reply.model] = None
    for model in (*PARAMS_MODELS, *EVENT_MODELS):  # named by JobRequest's params and by event streams
        seen[model] = None
    return list(seen)


def component_schemas() -> dict[str, Any]:
    """All models as components; `$defs` of nested models become components too."""
    models = referenced_models()
    _, top = models_json_schema([(model, "validation") for model in models], ref_template=REF_TEMPLATE)
    schemas = dict(sorted(top.get("$defs", {}).items()))
    schemas[JobRequest.__name__] = describe_job_request(schemas[JobRequest.__name__])
    return schemas


def describe_job_request(schema: dict[str, Any]) -> dict[str, Any]:
    """Say in the document what `JobRequest` checks in code rather than in its fields.

    `params` is a free object validated against the parameter model of the named model's
    task, so it is documented as one of those models. It is `anyOf`, not `oneOf`: the
    three models share optional fields (`{}` and `{"seed": 1}` are valid for all three),
    and `oneOf` would call such bodies invalid. Exactly one of `prompts` and `inputs` is
    required (a model validator); a list must hold at least one prompt.
    """
    schema = copy.deepcopy(schema)
    properties = schema["properties"]
    properties["params"] = {
        "anyOf": [ref(model) for model in PARAMS_MODELS],
        "default": {},
        "description": "Generation parameters, by the model's task (see GET /v1/models): text-generation takes "
        "TextParams, text-to-image ImageParams, unconditional-image UnconditionalImageParams, gan-image and vae-image "
        "GeneratorImageParams. Missing ones "
        "come from the model's registry defaults; the model's `limits` bound them further.",
    }
    for name in ("prompts", "inputs"):
        properties[name]["anyOf"][0]["minItems"] = 1
    properties["prompts"]["description"] = "Prompts, one item each (give this or `inputs`)."
    properties["inputs"]["description"] = "Prompts with their own seeds (give this or `prompts`)."
    properties["priority"]["description"] = "Higher runs first among the model's waiting jobs."
    schema["oneOf"] = [
        {"required": [name], "properties": {name: {"type": "array"}}} for name in ("prompts", "inputs")
    ]
    return schema


def parameter(param: Param) -> dict[str, Any]:
    required = param.required or param.location == "path"  # OpenAPI: a path parameter is always required
    return {"name": param.name, "in": param.location, "required": required,
            "description": param.description, "schema": param.schema}


def response(reply: Reply) -> dict[str, Any]:
    out: dict[str, Any] = {"description": reply.description}
    if reply.model is not None:
        out["content"] = {JSON: {"schema": ref(reply.model)}}
    elif reply.media_types:
        out["content"] = {media: {"schema": schema} for media, schema in reply.media_types.items()}
    if reply.headers:
        out["headers"] = {name: dict(header) for name, header in reply.headers.items()}
    if reply.links:
        out["links"] = {name: dict(link) for name, link in reply.links.items()}
    return out


def operation(route: Operation) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
    }
    if route.description:
        op["description"] = route.description
    if route.params:
        op["parameters"] = [parameter(param) for param in route.params]
    if route.request is not None:
        media: dict[str, Any] = {"schema": ref(route.request)}
        if route.request_examples:
            media["examples"] = {name: {"value": value} for name, value in route.request_examples.items()}
        op["requestBody"] = {"required": True, "content": {route.request_media_type: media}}
    op["responses"] = {str(status): response(reply) for status, reply in sorted(route.responses.items())}
    op["security"] = [{SECURITY_SCHEME: []}] if route.secured else []
    return op


def paths() -> dict[str, Any]:
    out: dict[str, dict[str, Any]] = {}
    for route in operations():
        out.setdefault(route.path, {})[route.method.lower()] = operation(route)
    return out


@lru_cache(maxsize=1)
def _document() -> dict[str, Any]:
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "genq",
            "version": "1",
            "summary": "Long-running AI generation jobs (text and images) on GPU workers.",
            "description": "Submit a job of many prompts, follow its progress, page through its items and "
            "download their outputs. Every error is JSON `{\"error\": {\"code\", \"message\", \"field\"}}`.",
        },
        "tags": [
            {"name": "jobs", "description": "Submit, follow, cancel and retry jobs; read their items."},
            {"name": "events", "description": "Live events of jobs, as Server-Sent Events."},
            {"name": "models", "description": "The models this service runs."},
            {"name": "files", "description": "OpenAI-compatible files: the input and output of batches."},
            {"name": "batches", "description": "OpenAI-compatible batches (the Batch API): each is genq jobs."},
            {"name": "health", "description": "Liveness and readiness probes (no API key)."},
        ],
        "paths": paths(),
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key: `Authorization: Bearer <key>`.",
                }
            },
        },
    }


def build_document(registry: Registry | None = None, settings: Settings | None = None) -> dict[str, Any]:
    """The document (a fresh copy: callers may change it). With a deployment's registry
    and settings, it declares what that deployment checks (see `for_deployment`)."""
    document = copy.deepcopy(_document())
    if registry is not None and settings is not None:
        for_deployment(document, registry, settings)
    return document


def for_deployment(document: dict[str, Any], registry: Registry, settings: Settings) -> None:
    """Declare the limits that come from settings and the registry, so that the document
    says exactly what the server refuses: the model names (an enum), each model's
    parameters narrowed by its `limits` (one branch per model), items per job, prompt
    characters and page sizes. Request examples name this deployment's models."""
    schemas = document["components"]["schemas"]
    job_request = schemas[JobRequest.__name__]
    job_request["properties"]["model"]["enum"] = registry.names()
    job_request["properties"]["prompts"]["anyOf"][0].update(maxItems=settings.max_items_per_job)
    job_request["properties"]["prompts"]["anyOf"][0]["items"]["maxLength"] = settings.max_prompt_chars
    job_request["properties"]["inputs"]["anyOf"][0].update(maxItems=settings.max_items_per_job)
    schemas["InputItem"]["properties"]["prompt"]["maxLength"] = settings.max_prompt_chars
    branches = []
    for spec in registry:
        name = f"{PARAMS_BY_TASK[spec.task].__name__}_{spec.name}"
        schemas[name] = params_within_limits(schemas[PARAMS_BY_TASK[spec.task].__name__], spec)
        branches += [job_request_branch(job_request, spec.name, name, given, other) for given, other in
                     (("prompts", "inputs"), ("inputs", "prompts"))]
    if branches:  # whole objects, one per model and kind of input, so a generator need not merge constraints
        schemas[JobRequest.__name__] = {"title": job_request["title"], "description": "One model's job request: "
                                        "its parameters as that model takes them.", "anyOf": branches}
    for path_item in document["paths"].values():
        for op in path_item.values():
            for param in op.get("parameters", []):
                if param["in"] == "query" and param["name"] == "limit":
                    param["schema"]["maximum"] = settings.max_page_size
            examples = op.get("requestBody", {}).get("content", {}).get(JSON, {}).get("examples", {})
            for key in list(examples):
                model = _stand_in(registry, examples[key]["value"]["model"])
                if model is None:
                    del examples[key]
                else:
                    examples[key]["value"]["model"] = model


def job_request_branch(job_request: dict[str, Any], model: str, params_schema: str, given: str, other: str) -> dict:
    """A job request for `model` that gives `given` (prompts or inputs) and not `other`."""
    properties = copy.deepcopy(job_request["properties"])
    properties["model"] = {"const": model}
    properties[given] = properties[given]["anyOf"][0]
    properties[other] = {"type": "null"}
    properties["params"] = {"$ref": REF_TEMPLATE.format(model=params_schema), "default": {}}
    return {"type": "object", "additionalProperties": False, "required": ["model", given], "properties": properties}


def params_within_limits(schema: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
    """A task's parameter schema, narrowed by one model's registry `limits`."""
    schema = copy.deepcopy(schema)
    schema["title"] = f"Parameters of {spec.name}"
    for field_name, bounds in spec.limits.items():
        alias = schema["properties"].get(ALIAS_OF.get(field_name, ""))
        if alias is not None:  # `num_return_sequences` is `n`: the same bounds
            narrow(alias["anyOf"][0], bounds)
        field = schema["properties"].get(field_name)
        if field is None:
            continue
        field["default"] = spec.defaults.get(field_name, field.get("default"))
        narrow(field, bounds)
        if not field.get("minimum", field["default"]) <= field["default"] <= field.get("maximum", field["default"]):
            del field["default"]  # the task's default is out of this model's range, and it has none of its own
    return schema


def narrow(field: dict[str, Any], bounds) -> None:
    """A numeric field's `minimum` and `maximum`, narrowed by a model's limit."""
    if bounds.max is not None:
        field["maximum"] = _number(min(field.get("maximum", bounds.max), bounds.max))
    if bounds.min is not None:
        field["minimum"] = _number(max(field.get("minimum", bounds.min), bounds.min))


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _stand_in(registry: Registry, example_model: str) -> str | None:
    """This deployment's model for an example written for a demo model: the same name, or
    the first model of the same kind (text or image)."""
    if registry.get(example_model) is not None:
        return example_model
    wants_image = "image" in example_model
    return next((spec.name for spec in registry if spec.task.is_image == wants_image), None)
