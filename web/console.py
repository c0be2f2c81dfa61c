"""The web console at `/`: pages for people, beside the API at /v1.

Each page is an HTML shell rendered here (navigation, headings, forms, the models of the
registry: readable without JavaScript); `static/console.js` signs in with an API key kept
in the tab's sessionStorage and fills the shell from the /v1 API, polling it for movement.
The key never reaches these pages: they read no session, cookie or key, and what they show
without one is the registry's models, which /docs and /openapi.json publish too.

The CSP is the site's `default-src 'self'` with one addition: images may also be `blob:`
URLs, because an item's PNG is fetched with the key in a header (an `<img src>` cannot
send one) and shown from the blob the page made of it.
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, render_template

from shared.model_files import weights_of
from shared.registry import ModelSpec, Task
from shared.states import JobState
from web.context import genq
from web.request_models import MAX_SEED, PARAMS_BY_TASK

console = Blueprint("console", __name__, template_folder="templates", static_folder="static",
                    static_url_path="/console/static")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; frame-ancestors 'none'; "
                               "base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
FIELD_KINDS = ("boolean", "integer", "number", "string")
PAGES = (("console.jobs", "Jobs"), ("console.submit", "Submit"), ("console.models", "Models"))


@console.after_request
def _security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    if response.mimetype == "text/html":  # the script and style sheet may be cached
        response.headers["Cache-Control"] = "no-store"
    return response


@console.get("/")
def jobs():
    return page("console/jobs.html", "jobs", "Jobs", states=[state.value for state in JobState])


@console.get("/jobs/<job_id>")
def job(job_id: str):
    return page("console/job.html", "job", "Job", job_id=job_id)


@console.get("/submit")
def submit():
    ctx = genq()
    return page("console/submit.html", "submit", "Submit a job", models=ctx.registry,
                fieldsets=[param_fieldset(task) for task in Task], max_items=ctx.settings.max_items_per_job,
                max_prompt_chars=ctx.settings.max_prompt_chars, max_seed=MAX_SEED)


@console.get("/models")
def models():
    return page("console/models.html", "models", "Models", models=[model_row(spec) for spec in genq().registry])


@console.get("/signin")
def signin():
    return page("console/signin.html", "signin", "Sign in")


def page(template: str, name: str, title: str, **context: Any) -> str:
    return render_template(template, page_name=name, title=title, pages=PAGES, **context)


def param_fieldset(task: Task) -> dict[str, Any]:
    """The form fields of a task's parameters, from the same pydantic model the API
    validates with: type, the task's default and bounds. The seed is a field of the form
    itself; a model's own defaults and limits are applied in the browser from /v1/models."""
    schema = PARAMS_BY_TASK[task].model_json_schema()
    fields = [param_field(name, prop) for name, prop in schema["properties"].items() if name != "seed"]
    return {"task": task.value, "fields": [field for field in fields if field is not None]}


def param_field(name: str, prop: dict[str, Any]) -> dict[str, Any] | None:
    """A field for a scalar parameter (one that may also be a list, like `stop`, is typed
    as its single value); None for one only an object or a list can give."""
    types = [option.get("type") for option in prop.get("anyOf", [prop])]
    kind = next((kind for kind in FIELD_KINDS if kind in types), None)
    if kind is None:
        return None
    field = {"name": name, "kind": kind, "default": prop.get("default"), "label": name.replace("_", " ")}
    field["min"] = prop.get("minimum", prop.get("exclusiveMinimum"))
    field["max"] = prop.get("maximum", prop.get("exclusiveMaximum"))
    field["step"] = prop.get("multipleOf", 1) if kind == "integer" else "any"
    return field


def model_row(spec: ModelSpec) -> dict[str, Any]:
    weights = weights_of(spec)
    return {"name": spec.name, "task": spec.task.value, "output": "image/png" if spec.task.is_image else "text/plain",
            "micro_batch_size": spec.micro_batch_size, "defaults": spec.defaults,
            "available": weights.available, "unavailable_reason": weights.reason,
            "limits": {name: {end: _number(value) for end, value in bounds.model_dump(exclude_none=True).items()}
                       for name, bounds in spec.limits.items()}}


def _number(value: float) -> int | float:
    """8, not 8.0: the registry reads bounds as floats."""
    return int(value) if float(value).is_integer() else value
