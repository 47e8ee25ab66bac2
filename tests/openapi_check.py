"""Holding the app to its OpenAPI document (web/openapi.py).

``operation_for(method, path)`` finds the documented operation of a request;
``check_response(method, path, response)`` validates a JSON answer's body against
the schema the document gives its status code (JSON Schema 2020-12, OpenAPI 3.1's
dialect), and fails when the operation or the status code is not documented.
A request the document has no operation for (an unknown path, a method a route
does not take) must be answered with an error, in the documented error shape (or
a redirect: Flask's to the path with its trailing slash).
``OpenApiClient`` is a Flask test client that checks every answer it gets.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from web.openapi import document

DOC_URI = "urn:progress-service:openapi"
DOC = document()
METHODS = ("get", "post", "put", "patch", "delete")


# Parameters that are Flask ``path`` converters: they may hold slashes (``vendor/chart.umd.js``).
PATH_PARAMETERS = frozenset({"{filename}"})


def path_pattern(template: str) -> re.Pattern[str]:
    """``/api/v1/jobs/{job_id}`` -> a regex matching a concrete path."""
    parts = re.split(r"(\{[^}]+\})", template)
    return re.compile("".join((".+" if p in PATH_PARAMETERS else "[^/]+") if p.startswith("{") else re.escape(p)
                              for p in parts) + "$")


PATTERNS = [(path_pattern(template), template) for template in DOC["paths"]]


def operation_for(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    """(the path template, the operation) documented for ``method`` on ``path``, or None."""
    for pattern, template in PATTERNS:
        if pattern.match(path):
            operation = DOC["paths"][template].get(method.lower())
            if operation is not None:
                return template, operation
    return None


def pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


@cache
def validator(json_pointer: str) -> Draft202012Validator:
    registry = Registry().with_resource(DOC_URI, Resource(contents=DOC, specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{DOC_URI}#/{json_pointer}"}, registry=registry)


def resolve(node: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A response object, following its ``$ref`` (``#/components/responses/X``), and its pointer."""
    ref = node.get("$ref")
    if ref is None:
        return node, []
    parts = ref.removeprefix("#/").split("/")
    found: Any = DOC
    for part in parts:
        found = found[part]
    return found, parts


def check_response(method: str, url: str, response) -> None:
    path = urlsplit(url).path
    if path.startswith("/rq/") and path != "/rq/":
        return  # rq-dashboard's own routes (web/openapi.py says why)
    found = operation_for(method, path)
    if found is None:  # no such route, not this method, a slash missing: an error or a redirect
        assert response.status_code >= 300, f"{method} {path} answered, but is not in the OpenAPI document"
        if response.mimetype == "application/json" and method.upper() != "HEAD":
            errors = list(validator(pointer("components", "schemas", "Error")).iter_errors(response.get_json()))
            assert not errors, f"{method} {path} {response.status_code}: not the error shape: {errors[0].message}"
        return
    template, operation = found
    status = str(response.status_code)
    answers = operation["responses"]
    assert status in answers, (
        f"{method} {path} answered {status}, which the OpenAPI document does not list for "
        f"{template} (it lists {', '.join(answers)})")
    answer, where = resolve(answers[status])
    if response.mimetype != "application/json" or method.upper() == "HEAD":
        return
    content = answer.get("content") or {}
    assert "application/json" in content, (
        f"{method} {path} answered {status} with JSON, which the document does not say")
    if where:
        json_pointer = pointer(*where, "content", "application/json", "schema")
    else:
        json_pointer = pointer("paths", template, method.lower(), "responses", status, "content",
                               "application/json", "schema")
    errors = sorted(validator(json_pointer).iter_errors(response.get_json()), key=str)
    assert not errors, (f"{method} {path} {status}: the body does not match the OpenAPI document: "
                        + "; ".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]))


class OpenApiClient(FlaskClient):
    """A test client that checks every answer against the OpenAPI document."""

    def open(self, *args, **kwargs):
        response = super().open(*args, **kwargs)
        request = response.request
        check_response(request.method, request.path, response)
        return response
