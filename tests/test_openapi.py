"""The OpenAPI document (web/openapi.py, served at /api/v1/openapi.json) against the app.

Valid OpenAPI 3.1; every route of the app in it and nothing the app lacks; and
(tests/openapi_check.py, the test client tests/test_api.py uses) every JSON
answer of the API tests matches its operation's schema.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from openapi_check import DOC, check_response
from openapi_spec_validator import validate
from test_api import build

from progress_service.models import DEFAULT_STEPS

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
DASHBOARD = "/rq/"  # rq-dashboard's routes below it are its own; /rq/ itself is documented


@pytest.fixture
def app(settings, real_redis):
    app = build(settings)
    yield app
    app.extensions["progress_events"].close()


def documented() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in DOC["paths"].items()
            for method in item if method.upper() in METHODS}


def app_routes(app) -> set[tuple[str, str]]:
    """(method, path) of every route, Flask's ``<conv:name>`` written OpenAPI's ``{name}``."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith(DASHBOARD) and rule.rule != DASHBOARD:
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        routes |= {(method, path) for method in rule.methods & METHODS}
    return routes


def test_the_document_is_valid_openapi_3_1():
    validate(DOC)  # openapi-spec-validator: raises on any error
    assert DOC["openapi"].startswith("3.1")
    schemas = DOC["components"]["schemas"]
    assert {"Snapshot", "BatchSnapshot", "Error", "HistoryEntry"} <= set(schemas)
    assert set(schemas["Error"]["required"]) == {"error", "detail"}


def test_every_route_of_the_app_is_documented_and_nothing_more(app):
    routes, paths = app_routes(app), documented()
    assert not routes - paths, f"routes missing from web/openapi.py: {sorted(routes - paths)}"
    assert not paths - routes, f"documented, but the app has no such route: {sorted(paths - routes)}"


def test_the_app_serves_the_document_to_anyone(app):
    r = app.test_client().get("/api/v1/openapi.json")  # checked against itself, too
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert r.get_json() == DOC
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Cache-Control"] == "no-cache, no-store, must-revalidate"


def test_an_answer_that_drifts_from_the_document_fails_the_check(app):
    store = app.extensions["progress"]
    store.create_job("job-drift", "31452104", steps=list(DEFAULT_STEPS))
    r = app.test_client().get("/api/v1/jobs/job-drift")  # passes the check
    snap = r.get_json()

    def answer(status: int, body) -> SimpleNamespace:
        return SimpleNamespace(status_code=status, mimetype="application/json", get_json=lambda: body)

    check_response("GET", "/api/v1/jobs/job-drift", answer(200, snap))
    for drifted in (
        {k: v for k, v in snap.items() if k != "seq"},  # a field gone
        {**snap, "status": "paused"},  # a status the API does not have
        {**snap, "progress_percent": 101},
        {**snap, "surprise": 1},  # a field nobody documented
    ):
        with pytest.raises(AssertionError, match="does not match the OpenAPI document"):
            check_response("GET", "/api/v1/jobs/job-drift", answer(200, drifted))
    with pytest.raises(AssertionError, match="does not list for"):
        check_response("GET", "/api/v1/jobs/job-drift", answer(418, snap))
    with pytest.raises(AssertionError, match="does not match"):
        check_response("GET", "/api/v1/jobs/nope", answer(404, {"error": "not_found"}))  # no detail
