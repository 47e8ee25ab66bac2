"""The public HTTP interface as an OpenAPI 3.1 document: ``GET /api/v1/openapi.json``.

Written here once, by hand, and served as is. tests/test_openapi.py holds it to
the app: it must be a valid OpenAPI 3.1 document, list every route of the app
(and none it lacks), and every JSON answer of the API tests must match the
schema of its operation. A new endpoint is therefore documented here in the same
change that adds it: its path below, its shapes under ``SCHEMAS`` (web/openapi_schemas.py).

Schemas are JSON Schema 2020-12 (OpenAPI 3.1's dialect): ``"type": ["string",
"null"]`` for a nullable field. The snapshot lists the documented fields; ``required``
names those the service sends today.
"""

from __future__ import annotations

import copy
from typing import Any

from flask import Blueprint, jsonify

from .auth import OPEN, read_access
from .openapi_schemas import JSON, SCHEMAS, ref

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")

def error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": ref("Error")}}}


RESPONSES: dict[str, dict[str, Any]] = {
    "BadInput": error("bad input: an id that does not match the pattern, an unknown field or parameter, "
                      "a pipeline that this server or a live worker does not know"),
    "Unauthorized": error("the API token is missing or wrong (PROGRESS_API_TOKEN is set)"),
    "ReadUnauthorized": error("PROGRESS_READ_AUTH=token: no token, or one that is wrong, expired, or a "
                              "read token of another job or batch (a list needs the API token)"),
    "CrossSite": error("a write sent by a page of another site"),
    "NotFound": error("no such job"),
    "Conflict": error("the job has finished already"),
    "NotJson": error("a write's body must be application/json, or none"),
    "TooLarge": error("the body is over 16 KiB"),
    "BackendDown": error("a backend (Redis) is down; Retry-After says when to try again"),
    "PostgresDown": error("PostgreSQL is down, or its schema is missing (run progress-service db "
                          "upgrade); Retry-After says when to try again"),
}


def respond(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def json_answer(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}}


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": ref("Id")}
BATCH_ID = {"name": "batch_id", "in": "path", "required": True, "schema": ref("Id")}
# an event stream resumes after the id a client has: the header, or the query for clients that cannot set it
SEQ = {"type": "string", "pattern": "^[0-9]+$"}
RESUME = [{"name": "Last-Event-ID", "in": "header", "schema": SEQ},
          {"name": "last_event_id", "in": "query", "schema": SEQ}]
PAPER_ID = {"name": "paper_id", "in": "path", "required": True, "schema": ref("Id")}
READS = {"400": respond("BadInput"), "401": respond("ReadUnauthorized"), "503": respond("BackendDown")}
WRITES = {"400": respond("BadInput"), "401": respond("Unauthorized"), "403": respond("CrossSite"),
          "413": respond("TooLarge"), "415": respond("NotJson"), "503": respond("BackendDown")}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
DASHBOARD_FILTERS = [
    {"name": "status", "in": "query", "schema": ref("Status")},
    {"name": "pipeline", "in": "query", "schema": ref("Id")},
    {"name": "tag", "in": "query", "schema": ref("Id")},
    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20},
     "description": "finished jobs listed"},
]

PATHS: dict[str, dict[str, Any]] = {
    "/api/v1/jobs": {
        "post": {
            "operationId": "submitJob",
            "summary": "submit a job: the pipeline runs on a worker",
            "security": BEARER,
            "requestBody": {"required": False, "content": {JSON: {"schema": ref("SubmitRequest")}}},
            "responses": {
                "202": {**json_answer("queued; Location is the status_url", ref("Submitted")),
                        "headers": {"Location": {"schema": {"type": "string"}}}},
                **WRITES,
            },
        },
        "get": {
            "operationId": "listJobs",
            "summary": "jobs, newest first: Redis' and, once expired there, PostgreSQL's",
            "parameters": [
                {"name": "paper_id", "in": "query", "schema": ref("Id")},
                {"name": "status", "in": "query", "schema": ref("Status")},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1,
                                                            "maximum": 1000, "default": 50}},
            ],
            "responses": {
                "200": json_answer("a Warning header says so when PostgreSQL could not be read",
                                   ref("JobList")),
                **READS,
            },
        },
    },
    "/api/v1/overview": {
        "get": {
            "operationId": "getOverview",
            "summary": "the live dashboard's snapshot: counts by state, active and recently "
                       "finished jobs, recent batches (a list: under PROGRESS_READ_AUTH=token the "
                       "API token)",
            "parameters": DASHBOARD_FILTERS,
            "responses": {"200": json_answer("the overview", ref("Overview")), **READS},
        },
    },
    "/api/v1/events": {
        "get": {
            "operationId": "followEveryJob",
            "summary": "Server-Sent Events of every job: `event: overview` (an Overview) first, then "
                       "`event: job` (a job's Snapshot, without result), `event: counts` "
                       "(StateCounts) and `event: batch` (a BatchBrief); never ends",
            "description": "No id: a client that reconnects gets a fresh overview. ?pipeline= and "
                           "?tag= narrow the jobs and batches sent, ?status= the overview's lists; "
                           "the counts are of every job. A `: keep-alive` comment after quiet "
                           "spells. web/static/progress-client.js's followAll() follows it. A "
                           "list: under PROGRESS_READ_AUTH=token it needs the API token.",
            "parameters": DASHBOARD_FILTERS,
            "responses": {
                "200": {"description": "the stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                **READS,
            },
        },
    },
    "/api/v1/pipelines": {
        "get": {
            "operationId": "listPipelines",
            "summary": "every pipeline this server can submit, and whether the queue's live workers "
                       "know it",
            "description": "Bundled, from PROGRESS_PIPELINES, and from entry points. A submit is "
                           "refused (400) for a pipeline that a live worker of the queue does not "
                           "know with the same steps; with no live worker it waits in the queue.",
            "responses": {"200": json_answer("the pipelines", ref("PipelineList")),
                          "401": respond("ReadUnauthorized"), "503": respond("BackendDown")},
        },
    },
    "/api/v1/jobs/{job_id}": {
        "get": {
            "operationId": "getJob",
            "summary": "the job's snapshot; from PostgreSQL once Redis has expired it",
            "parameters": [JOB_ID],
            "responses": {"200": json_answer("the snapshot", ref("Snapshot")),
                          "404": respond("NotFound"), **READS},
        },
    },
    "/api/v1/jobs/{job_id}/history": {
        "get": {
            "operationId": "getJobHistory",
            "summary": "the job's accepted changes, oldest first (capped)",
            "parameters": [JOB_ID],
            "responses": {"200": json_answer("the history",
                                             {"type": "array", "items": ref("HistoryEntry")}),
                          "404": respond("NotFound"), **READS},
        },
    },
    "/api/v1/jobs/{job_id}/events": {
        "get": {
            "operationId": "followJob",
            "summary": "Server-Sent Events: one `event: progress` per change, `id:` its seq, "
                       "`data:` the snapshot; ends after the terminal event",
            "description": "The current snapshot first, then each change. With Last-Event-ID "
                           "(header, or ?last_event_id=) the events after that seq, then the live "
                           "ones. web/static/progress-client.js follows it from any page.",
            "parameters": [
                JOB_ID, *RESUME,
            ],
            "responses": {
                "200": {"description": "the stream; each event's data is a Snapshot",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                "204": {"description": "the job has ended and the client has its last event: "
                                       "EventSource stops reconnecting"},
                "404": respond("NotFound"),
                **READS,
            },
        },
    },
    "/api/v1/jobs/{job_id}/video": {
        "get": {
            "operationId": "getJobVideo",
            "summary": "the finished video file (Range requests answered)",
            "parameters": [JOB_ID],
            "responses": {
                "200": {"description": "the file",
                        "content": {"video/mp4": {"schema": {"type": "string",
                                                             "contentMediaType": "video/mp4"}}}},
                "206": {"description": "the Range asked for",
                        "content": {"video/mp4": {"schema": {"type": "string",
                                                             "contentMediaType": "video/mp4"}}}},
                "304": {"description": "not modified (If-None-Match, If-Modified-Since)"},
                "416": {"description": "a Range outside the file"},
                "404": respond("NotFound"),
                **READS,
            },
        },
    },
    "/api/v1/jobs/{job_id}/progress": {
        "post": {
            "operationId": "reportProgress",
            "summary": "a producer's update, through the same Lua script as the worker's; "
                       "also the job's heartbeat ({} says only that)",
            "security": BEARER,
            "parameters": [JOB_ID],
            "requestBody": {"required": False, "content": {JSON: {"schema": ref("ProgressUpdate")}}},
            "responses": {"200": json_answer("applied, or refused (a regression, a finished job) "
                                             "with accepted false", ref("UpdateAnswer")),
                          "404": respond("NotFound"), **WRITES},
        },
    },
    "/api/v1/jobs/{job_id}/cancel": {
        "post": {
            "operationId": "cancelJob",
            "summary": "cancel: the job ends canceled, its process tree killed",
            "security": BEARER,
            "parameters": [JOB_ID],
            "responses": {"202": json_answer("canceled", ref("Canceled")),
                          "404": respond("NotFound"), "409": respond("Conflict"), **WRITES},
        },
    },
    "/api/v1/jobs/{job_id}/retry": {
        "post": {
            "operationId": "retryJob",
            "summary": "a new attempt of a failed or canceled job: a new job (attempt + 1, "
                       "retry_of), queued",
            "description": "Same paper, pipeline and tags. A resumable pipeline's retry starts "
                           "with the steps the job completed done (its bar at their share) and "
                           "runs in a copy of its output folder. 409 for a job in another state, "
                           "or one retried already (the detail names its retry). Works for a job "
                           "only PostgreSQL still keeps. The body, if any, is {}.",
            "security": BEARER,
            "parameters": [JOB_ID],
            "responses": {"202": json_answer("the new attempt, queued", ref("Retried")),
                          "404": respond("NotFound"), "409": respond("Conflict"), **WRITES},
        },
    },
    "/api/v1/tokens": {
        "post": {
            "operationId": "mintReadToken",
            "summary": "a read token for one job or one batch (and its members), for ttl seconds",
            "security": BEARER,
            "requestBody": {"required": True, "content": {JSON: {"schema": ref("TokenRequest")}}},
            "responses": {"201": json_answer("the token", ref("ReadToken")),
                          "404": respond("NotFound"), **WRITES},
        },
    },
    "/api/v1/batches": {
        "post": {
            "operationId": "submitBatch",
            "summary": "submit one job per paper, as one batch",
            "security": BEARER,
            "requestBody": {"required": True, "content": {JSON: {"schema": ref("BatchRequest")}}},
            "responses": {
                "202": {**json_answer("queued; Location is the status_url", ref("BatchSubmitted")),
                        "headers": {"Location": {"schema": {"type": "string"}}}},
                **WRITES,
            },
        },
    },
    "/api/v1/batches/{batch_id}": {
        "get": {
            "operationId": "getBatch",
            "summary": "the batch's snapshot; from PostgreSQL once Redis has expired it",
            "parameters": [BATCH_ID],
            "responses": {"200": json_answer("the batch snapshot", ref("BatchSnapshot")),
                          "404": respond("NotFound"), **READS},
        },
    },
    "/api/v1/batches/{batch_id}/events": {
        "get": {
            "operationId": "followBatch",
            "summary": "Server-Sent Events: `event: batch` (the BatchSnapshot) and `event: "
                       "progress` (a member's Snapshot), increasing `id:`; ends after the batch "
                       "finishes",
            "parameters": [
                BATCH_ID, *RESUME,
            ],
            "responses": {
                "200": {"description": "the stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                "204": {"description": "the batch has finished and the client has its last event"},
                "404": respond("NotFound"),
                **READS,
            },
        },
    },
    "/api/v1/batches/{batch_id}/cancel": {
        "post": {
            "operationId": "cancelBatch",
            "summary": "cancel every member not yet finished",
            "security": BEARER,
            "parameters": [BATCH_ID],
            "responses": {"202": json_answer("canceled", ref("BatchCanceled")),
                          "404": respond("NotFound"), "409": respond("Conflict"), **WRITES},
        },
    },
    "/batches/{batch_id}/": {
        "get": {
            "operationId": "batchPage",
            "summary": "the live page of a batch: overall bar, counts, one live row per member",
            "parameters": [BATCH_ID],
            "responses": {"200": {"description": "the page",
                                  "content": {"text/html": {"schema": {"type": "string"}}}},
                          "404": {"description": "no such batch"}, **READS},
        },
    },
    "/api/v1/insights": {
        "get": {
            "operationId": "getInsights",
            "summary": "per pipeline: jobs finished per hour or day, success rate, p50/p90 of job and "
                       "step durations, the most frequent failures, the slowest recent jobs",
            "description": "Read from PostgreSQL (the finished jobs the mirror has copied). A list: "
                           "under PROGRESS_READ_AUTH=token it needs the API token.",
            "parameters": [
                {"name": "pipeline", "in": "query", "schema": ref("Id"),
                 "description": "one pipeline (default: every pipeline)"},
                {"name": "since", "in": "query",
                 "schema": {"type": "string", "default": "24h", "examples": ["90m", "24h", "7d", "2w",
                                                                             "2026-11-30T00:00:00Z"]},
                 "description": "the window's start: a span back from now (m, h, d, w) or an ISO-8601 "
                                "time with its zone; at most 90 days back"},
            ],
            "responses": {"200": json_answer("the insights", ref("Insights")),
                          "400": respond("BadInput"), "401": respond("ReadUnauthorized"),
                          "503": respond("PostgresDown")},
        },
    },
    "/insights/": {
        "get": {
            "operationId": "insightsPage",
            "summary": "the insights drawn as charts (Chart.js, served from /static/vendor/), "
                       "with the same parameters as /api/v1/insights",
            "parameters": [{"name": "pipeline", "in": "query", "schema": ref("Id")},
                           {"name": "since", "in": "query", "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the page",
                                  "content": {"text/html": {"schema": {"type": "string"}}}},
                          "400": {"description": "a bad parameter (an HTML page)"},
                          "401": respond("ReadUnauthorized"),
                          "503": {"description": "PostgreSQL is down (an HTML page)"}},
        },
    },
    "/api/v1/openapi.json": {
        "get": {
            "operationId": "getOpenApi",
            "summary": "this document",
            "responses": {"200": json_answer("OpenAPI 3.1", {"type": "object"})},
        },
    },
    "/status/{paper_id}/": {
        "get": {
            "operationId": "paperPage",
            "summary": "the live page of the paper's latest job; with ?_json=1 its status in brief",
            "parameters": [PAPER_ID, {"name": "_json", "in": "query", "schema": {"enum": ["0", "1"]}}],
            "responses": {
                "200": {"description": "the page, or with ?_json=1 the PaperStatus",
                        "content": {"text/html": {"schema": {"type": "string"}},
                                    JSON: {"schema": ref("PaperStatus")}}},
                **READS,
            },
        },
    },
    "/": {
        "get": {
            "operationId": "dashboardPage",
            "summary": "the live dashboard of every job (counts, running jobs, batches, recently "
                       "finished), with filters and a form to submit a job",
            "parameters": DASHBOARD_FILTERS,
            "responses": {"200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}},
                          **READS},
        },
    },
    "/static/{filename}": {
        "get": {
            "operationId": "staticFile",
            "summary": "the pages' scripts and styles, among them progress-client.js (an ES "
                       "module any page may import: it is served with Access-Control-Allow-Origin: *) "
                       "and the vendored Chart.js (vendor/chart.umd.js: filename may name a folder)",
            "parameters": [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "the file"}, "404": {"description": "no such file"}},
        },
    },
    "/healthz": {
        "get": {
            "operationId": "health",
            "summary": "whether Redis and PostgreSQL answer",
            "responses": {
                "200": json_answer("both answer", ref("Health")),
                "503": json_answer("one is down: named, with error and detail", ref("Health")),
            },
        },
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "responses": {"200": {"description": "Prometheus text",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        },
    },
    "/rq/": {
        "get": {
            "operationId": "rqDashboard",
            "summary": "the RQ dashboard (rq-dashboard), behind the API token when one is set",
            "description": "Its pages and data routes under /rq/ are rq-dashboard's own, not this "
                           "service's interface: they are not listed here.",
            "security": [{"bearer": []}, {"basic": []}],
            "responses": {"200": {"description": "the dashboard",
                                  "content": {"text/html": {"schema": {"type": "string"}}}},
                          "401": {"description": "the token is missing or wrong"}},
        },
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
    "info": {
        "title": "progress-service",
        "version": "1",
        "description": (
            "One source of truth for the progress of long pipeline jobs. Every JSON answer "
            "carries Cache-Control: no-cache, no-store, must-revalidate. Reads (GET) under "
            "/api/ allow any origin (Access-Control-Allow-Origin: *); writes are refused from "
            "pages of other sites and need the API token when PROGRESS_API_TOKEN is set."
        ),
    },
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "responses": RESPONSES,
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "PROGRESS_API_TOKEN; writes need it when it is set"},
            "readToken": {"type": "apiKey", "in": "query", "name": "token",
                          "description": "PROGRESS_READ_AUTH=token: the API token or a read token, "
                                         "as ?token= or as a bearer token; every read needs one"},
            "basic": {"type": "http", "scheme": "basic",
                      "description": "for a browser at /rq/: the token as the password"},
        },
    },
}


def document() -> dict[str, Any]:
    """The OpenAPI document (a copy: callers may change theirs)."""
    return copy.deepcopy(DOCUMENT)


@bp.get("/openapi.json")
@read_access(OPEN)  # it describes the endpoints and holds no job's data
def openapi_json():
    return jsonify(DOCUMENT)
