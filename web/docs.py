"""The API's description: GET /openapi.json (the document) and GET /docs (a page for
people, rendered on the server from the same document; self-contained, no script, no CDN)."""
from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, jsonify, render_template, request
from markupsafe import Markup, escape

from web.context import genq
from web.openapi import build_document

docs = Blueprint("docs", __name__, template_folder="templates", static_folder="static", static_url_path="/docs/static")

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
HTTP_METHODS = ("get", "post", "put", "patch", "delete")
REF_PREFIX = "#/components/schemas/"


@docs.after_request
def _security_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


@docs.get("/openapi.json")
def openapi_json():
    return jsonify(deployment_document())


@docs.get("/docs")
def docs_page():
    document = deployment_document()
    base_url = request.host_url.rstrip("/")
    operations = [_operation_view(path, method, op, base_url) for path, method, op in _operations(document)]
    return render_template("docs.html", doc=document, operations=operations, schemas=_schema_views(document))


def deployment_document() -> dict[str, Any]:
    ctx = genq()
    return build_document(ctx.registry, ctx.settings)


def _operations(document: dict[str, Any]):
    """In the document's order, which is the route table's."""
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                yield path, method, op


def _operation_view(path: str, method: str, op: dict[str, Any], base_url: str) -> dict[str, Any]:
    body = op.get("requestBody", {}).get("content", {}).get("application/json")
    examples = {name: pretty(ex["value"]) for name, ex in (body or {}).get("examples", {}).items()}
    return {
        "id": op["operationId"], "method": method.upper(), "path": path, "op": op,
        "secured": bool(op.get("security")),
        "body_schema": body["schema"] if body else None,
        "body_examples": examples,
        "curl": curl(method, path, op, base_url),
    }


def curl(method: str, path: str, op: dict[str, Any], base_url: str) -> str:
    """A curl command line for the operation: path parameters as shell variables, the
    first request example as the body."""
    url = base_url + path.replace("{job_id}", "$JOB_ID").replace("{index}", "0")
    lines = [" ".join(["curl"] + (["-X", method.upper()] if method != "get" else []) + [f'"{url}"'])]
    if op.get("security"):
        lines.append('-H "Authorization: Bearer $GENQ_API_KEY"')
    body = op.get("requestBody", {}).get("content", {}).get("application/json")
    if body and body.get("examples"):
        example = next(iter(body["examples"].values()))["value"]
        lines += ['-H "Content-Type: application/json"', f"-d '{json.dumps(example)}'"]
    return " \\\n     ".join(lines)


def _schema_views(document: dict[str, Any]) -> list[dict[str, Any]]:
    views = []
    for name, schema in document["components"]["schemas"].items():
        required = set(schema.get("required", []))
        properties = [
            {"name": prop, "schema": sub, "required": prop in required} for prop, sub in schema.get("properties", {}).items()
        ]
        views.append({"name": name, "schema": schema, "properties": properties, "json": pretty(schema)})
    return views


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


@docs.app_template_filter("schema_type")
def schema_type(schema: dict[str, Any]) -> Markup:
    """A short type for people ("array of InputItem", "integer ≥ 0 | null"), component names linked."""
    if "$ref" in schema:
        name = schema["$ref"].removeprefix(REF_PREFIX)
        return Markup('<a href="#schema-{0}">{0}</a>').format(name)
    for combiner in ("anyOf", "oneOf"):
        if combiner in schema:
            return Markup(" | ").join(schema_type(sub) for sub in schema[combiner])
    kind = schema.get("type", "any")
    if kind == "array":
        return Markup("array of ") + schema_type(schema.get("items", {}))
    if "enum" in schema:
        return Markup(" | ").join(escape(json.dumps(v)) for v in schema["enum"])
    return escape(kind) + escape(_constraints(schema))


def _constraints(schema: dict[str, Any]) -> str:
    marks = {"minimum": "≥", "exclusiveMinimum": ">", "maximum": "≤", "exclusiveMaximum": "<",
             "minLength": "length ≥", "maxLength": "length ≤", "multipleOf": "multiple of", "format": ""}
    found = [f"{mark} {schema[key]}".strip() for key, mark in marks.items() if key in schema]
    return f" ({', '.join(found)})" if found else ""


@docs.app_template_filter("ref_name")
def ref_name(schema: dict[str, Any] | None) -> str | None:
    ref = (schema or {}).get("$ref", "")
    return ref.removeprefix(REF_PREFIX) if ref.startswith(REF_PREFIX) else None
