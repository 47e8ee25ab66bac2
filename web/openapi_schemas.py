"""The shapes of the OpenAPI document (web/openapi.py): its JSON Schema 2020-12 schemas.

Kept apart from the paths so that each file reads as one thing: what the answers look
like here, which endpoint answers what there. A nullable field is ``"type": [T, "null"]``.
The snapshot lists every field of the public snapshot; ``required`` names those the
service sends today.
"""

from __future__ import annotations

import copy
from typing import Any

ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
STATUSES = ["pending", "running", "completed", "failed", "canceled"]
JSON = "application/json"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(type_: str, **more: Any) -> dict[str, Any]:
    return {"type": [type_, "null"], **more}


TIME = nullable("string", format="date-time", description="ISO-8601 UTC, milliseconds; the Redis server's clock")
ID = {"type": "string", "pattern": ID_PATTERN}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Id": {**ID, "description": "a job, paper, batch or pipeline id"},
    "Status": {"type": "string", "enum": STATUSES},
    "Error": {
        "type": "object",
        "description": "every error: 400 bad input, 401 token, 403 a write from another site, "
                       "404 unknown, 405, 409 conflict, 413 body too large, 415 not JSON, "
                       "503 a backend down",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "description": "what, as a code: invalid_input, not_found, ..."},
            "detail": {"type": "string", "description": "what went wrong, for a person"},
        },
        "additionalProperties": False,
    },
    "Snapshot": {
        "type": "object",
        "description": "a job's current state",
        "required": [
            "job_id", "paper_id", "pipeline", "status", "progress_percent", "current_step", "steps",
            "completed_steps", "total_steps", "message", "error", "result", "seq", "created_at",
            "started_at", "progress_updated_at", "finished_at", "heartbeat_at", "attempt", "retry_of",
            "is_stale", "eta_seconds", "eta_source",
        ],
        "properties": {
            "job_id": ID,
            "paper_id": ID,
            "pipeline": {"type": "string"},
            "status": ref("Status"),
            "progress_percent": {"type": "number", "minimum": 0, "maximum": 100},
            "current_step": nullable("string"),
            "steps": {"type": "array", "items": {"type": "string"}},
            "completed_steps": {"type": "array", "items": {"type": "string"},
                                "description": "a prefix of steps"},
            "total_steps": {"type": "integer", "minimum": 0},
            "message": nullable("string"),
            "error": nullable("string"),
            "result": nullable("object", description='e.g. {"video_url": "..."} once completed'),
            "seq": {"type": "integer", "minimum": 0, "description": "+1 on every accepted change"},
            "created_at": TIME,
            "started_at": TIME,
            "progress_updated_at": TIME,
            "finished_at": TIME,
            "heartbeat_at": TIME,
            "batch_id": nullable("string"),
            "tags": {"type": "array", "items": ID, "maxItems": 16},
            "attempt": {"type": "integer", "minimum": 1, "description": "1 for a first run; a retry is "
                                                                        "attempt + 1"},
            "retry_of": nullable("string", description="the job this one retries"),
            "is_stale": {"type": "boolean", "description": "derived at read time"},
            "eta_seconds": nullable("number", description="seconds left (a pending job: until it "
                                    "finishes, its wait in the queue included): its own rate and "
                                    "past jobs' step durations"),
            "eta_source": {"enum": ["rate", "history", "blend", None],
                           "description": "what eta_seconds rests on: the job's rate alone, past jobs "
                                          "alone (no rate yet), both, or nothing (null)"},
        },
        "additionalProperties": False,
    },
    "BatchSnapshot": {
        "type": "object",
        "description": "a batch's current state (the batch routes use it)",
        "required": ["batch_id", "name", "pipeline", "tags", "job_ids", "total", "pending", "running",
                     "completed", "failed", "canceled", "progress_percent", "status", "created_at",
                     "finished_at", "eta_seconds"],
        "properties": {
            "batch_id": ID,
            "name": nullable("string"),
            "pipeline": {"type": "string"},
            "tags": {"type": "array", "items": ID},
            "job_ids": {"type": "array", "items": ID},
            **{count: {"type": "integer", "minimum": 0}
               for count in ("total", "pending", "running", "completed", "failed", "canceled")},
            "progress_percent": {"type": "number", "minimum": 0, "maximum": 100},
            "status": ref("Status"),
            "created_at": TIME,
            "finished_at": TIME,
            "eta_seconds": nullable("number"),
        },
        "additionalProperties": False,
    },
    "HistoryEntry": {
        "type": "object",
        "required": ["seq", "at", "progress_percent", "current_step", "status"],
        "properties": {
            "seq": {"type": "integer", "minimum": 0},
            "at": TIME,
            "progress_percent": {"type": "number", "minimum": 0, "maximum": 100},
            "current_step": nullable("string"),
            "status": ref("Status"),
            "message": {"type": "string", "description": "a resumed retry's first entry only: "
                                                         "the steps it starts with done"},
        },
        "additionalProperties": False,
    },
    "SubmitRequest": {
        "type": "object",
        "required": ["paper_id"],
        "properties": {
            "paper_id": ID,
            "pipeline": {**ID, "default": "video",
                         "description": "one of GET /api/v1/pipelines; refused (400) when this server "
                                        "or a live worker of the queue does not know it"},
            "tags": {"type": "array", "items": ID, "maxItems": 16},
            "enqueue": {"type": "boolean", "default": True,
                        "description": "false, with steps: a tracked job that no worker runs"},
            "steps": {"type": "array", "minItems": 1, "uniqueItems": True,
                      "items": {"type": "string", "minLength": 1, "maxLength": 200},
                      "description": "a tracked job's steps, in order (with enqueue false)"},
            "retries": {"type": "integer", "minimum": 0, "maximum": 10, "default": 0,
                        "description": "a failure is retried this many times, each a new job "
                                       "(attempt + 1) after a doubling backoff; not a cancel, "
                                       "nor a command that refused its input"},
        },
        "additionalProperties": False,
    },
    "Submitted": {
        "type": "object",
        "required": ["job_id", "status_url", "events_url", "page_url"],
        "properties": {
            "job_id": ID,
            "status_url": {"type": "string", "description": "the snapshot (GET)"},
            "events_url": {"type": "string", "description": "its event stream"},
            "page_url": {"type": "string", "description": "the paper's live page"},
            "read_token": {"type": "string", "description": "under PROGRESS_READ_AUTH=token"},
        },
        "additionalProperties": False,
    },
    "BatchRequest": {
        "type": "object",
        "required": ["paper_ids"],
        "properties": {
            "paper_ids": {"type": "array", "items": ID, "minItems": 1, "maxItems": 1000},
            "pipeline": {**ID, "default": "video"},
            "tags": {"type": "array", "items": ID, "maxItems": 16},
            "name": {"type": "string"},
        },
        "additionalProperties": False,
    },
    "BatchSubmitted": {
        "type": "object",
        "required": ["batch_id", "job_ids", "status_url", "events_url", "page_url"],
        "properties": {
            "batch_id": ID,
            "job_ids": {"type": "array", "items": ID},
            "status_url": {"type": "string"},
            "events_url": {"type": "string"},
            "page_url": {"type": "string"},
            "read_token": {"type": "string", "description": "under PROGRESS_READ_AUTH=token"},
        },
        "additionalProperties": False,
    },
    "ProgressUpdate": {
        "type": "object",
        "description": "a producer's update; a field left out keeps the stored value",
        "properties": {
            "progress_percent": {"type": "number", "minimum": 0, "maximum": 100},
            "current_step": {"type": "string", "description": "one of the job's steps"},
            "status": ref("Status"),
            "message": {"type": "string"},
            "error": {"type": "string"},
            "result": {"type": "object"},
            "force": {"type": "boolean", "default": False},
        },
        "additionalProperties": False,
    },
    "UpdateAnswer": {
        "type": "object",
        "required": ["accepted", "reason", "seq"],
        "properties": {
            "accepted": {"type": "boolean"},
            "reason": {"enum": ["ok", "unchanged", "regression", "terminal"]},
            "seq": {"type": "integer", "minimum": 0},
        },
        "additionalProperties": False,
    },
    "JobList": {
        "type": "object",
        "required": ["jobs"],
        "properties": {"jobs": {"type": "array", "items": ref("Snapshot")}},
        "additionalProperties": False,
    },
    "PaperStatus": {
        "type": "object",
        "description": "the paper's latest job in brief; an unknown paper has exists false",
        "required": ["paper_id", "pmid", "exists", "status", "current_step", "completed_steps",
                     "progress_percent", "progress_updated_at", "is_stale", "final_video",
                     "final_video_url", "job_id"],
        "properties": {
            "paper_id": ID,
            "pmid": nullable("string"),
            "exists": {"type": "boolean"},
            "status": {"enum": [*STATUSES, None]},
            "current_step": nullable("string"),
            "completed_steps": {"type": "array", "items": {"type": "string"}},
            "progress_percent": nullable("number", minimum=0, maximum=100),
            "progress_updated_at": TIME,
            "is_stale": {"type": "boolean"},
            "final_video": nullable("string"),
            "final_video_url": nullable("string"),
            "job_id": nullable("string"),
            "queue": {
                "description": "a pending job's RQ queue and how many workers listen there",
                "type": ["object", "null"],
                "required": ["name", "workers"],
                "properties": {"name": {"type": "string"}, "workers": {"type": "integer", "minimum": 0}},
            },
            "typical_seconds": nullable("number", minimum=0,
                                        description="how long a job of its pipeline typically takes: the "
                                                    "median of its latest completed jobs"),
        },
        "additionalProperties": False,
    },
    "Health": {
        "type": "object",
        "required": ["redis", "postgres"],
        "properties": {
            "redis": {"enum": ["ok", "down"]},
            "postgres": {"enum": ["ok", "down"]},
            "error": {"type": "string"},
            "detail": {"type": "string"},
        },
        "additionalProperties": False,
    },
}


SCHEMAS["TokenRequest"] = {
    "type": "object",
    "description": "one of job_id and batch_id",
    "properties": {"job_id": ID, "batch_id": ID,
                   "ttl": {"type": "integer", "minimum": 1, "maximum": 366 * 24 * 3600, "default": 604800}},
    "additionalProperties": False,
}
SCHEMAS["ReadToken"] = {
    "type": "object",
    "required": ["read_token", "expires_at"],
    "properties": {"read_token": {"type": "string"}, "expires_at": {"type": "string", "format": "date-time"}},
    "additionalProperties": False,
}


# the cancel answer: the job's snapshot after it, and where to read it
SCHEMAS["Canceled"] = copy.deepcopy(SCHEMAS["Snapshot"])
SCHEMAS["Canceled"].update(description="the job's snapshot after the cancel, and its status_url")
SCHEMAS["Canceled"]["required"].append("status_url")
SCHEMAS["Canceled"]["properties"]["status_url"] = {"type": "string"}


# the retry answer: a submit's, with the new job's attempt and the job it retries
SCHEMAS["Retried"] = copy.deepcopy(SCHEMAS["Submitted"])
SCHEMAS["Retried"].update(description="the new attempt: its id and URLs, its attempt number and "
                                      "the job it retries")
SCHEMAS["Retried"]["required"] += ["attempt", "retry_of"]
SCHEMAS["Retried"]["properties"].update(attempt={"type": "integer", "minimum": 2}, retry_of=ID)


# the batch cancel answer: the batch's snapshot after it, and the members it canceled
SCHEMAS["BatchCanceled"] = copy.deepcopy(SCHEMAS["BatchSnapshot"])
SCHEMAS["BatchCanceled"].update(description="the batch's snapshot after the cancel, and the "
                                            "members it canceled")
SCHEMAS["BatchCanceled"]["required"].append("canceled_job_ids")
SCHEMAS["BatchCanceled"]["properties"]["canceled_job_ids"] = {"type": "array", "items": ID}


# the live dashboard (web/live.py): GET /api/v1/overview, and the first event of GET /api/v1/events
SCHEMAS["StateCounts"] = {
    "type": "object",
    "description": "jobs by state, over the newest jobs Redis holds (at most count_window)",
    "required": [*STATUSES, "total"],
    "properties": {name: {"type": "integer", "minimum": 0} for name in [*STATUSES, "total"]},
    "additionalProperties": False,
}
SCHEMAS["BatchBrief"] = copy.deepcopy(SCHEMAS["BatchSnapshot"])
SCHEMAS["BatchBrief"].update(description="a batch's snapshot without its job_ids (the dashboard's)")
SCHEMAS["BatchBrief"]["required"].remove("job_ids")
del SCHEMAS["BatchBrief"]["properties"]["job_ids"]
SCHEMAS["Overview"] = {
    "type": "object",
    "description": "the live dashboard's snapshot: counts of every job; the lists narrowed by "
                   "?status=, ?pipeline= and ?tag=",
    "required": ["counts", "count_window", "active", "finished", "batches", "pipelines", "server_now_ms"],
    "properties": {
        "counts": ref("StateCounts"),
        "count_window": {"type": "integer", "minimum": 1, "description": "the most jobs counted"},
        "active": {"type": "array", "items": ref("Snapshot"),
                   "description": "pending and running jobs, newest first (200 at most)"},
        "finished": {"type": "array", "items": ref("Snapshot"),
                     "description": "the newest finished jobs (?limit=, 20 by default)"},
        "batches": {"type": "array", "items": ref("BatchBrief"), "description": "recent batches, newest first"},
        "pipelines": {"type": "array", "items": {"type": "string"},
                      "description": "the pipelines of the jobs counted"},
        "server_now_ms": {"type": "integer", "description": "the Redis server's clock"},
    },
    "additionalProperties": False,
}
# GET /api/v1/pipelines
SCHEMAS["Pipeline"] = {
    "type": "object",
    "required": ["name", "steps", "weights", "timeout", "resumable", "description", "source",
                 "workers", "known_to_workers"],
    "properties": {
        "name": ID,
        "steps": {"type": "array", "minItems": 1, "items": {"type": "string"}},
        "weights": nullable("array", items={"type": "number", "exclusiveMinimum": 0},
                            description="each step's share of the bar; null: equal shares"),
        "timeout": nullable("integer", minimum=1, description="seconds; null: PROGRESS_JOB_TIMEOUT"),
        "resumable": {"type": "boolean"},
        "description": {"type": "string"},
        "source": {"type": "string",
                   "description": "bundled, the path of the PROGRESS_PIPELINES file, or entry point <name>"},
        "workers": {
            "type": "object",
            "required": ["live", "knowing"],
            "properties": {"live": {"type": "integer", "minimum": 0},
                           "knowing": {"type": "integer", "minimum": 0,
                                       "description": "live workers that know it with the same steps"}},
            "additionalProperties": False,
        },
        "known_to_workers": nullable("boolean", description="every live worker knows it (a submit is "
                                                            "accepted); null: no worker is live (a "
                                                            "submit waits in the queue)"),
    },
    "additionalProperties": False,
}
SCHEMAS["PipelineList"] = {
    "type": "object",
    "required": ["pipelines", "queue", "live_workers"],
    "properties": {
        "pipelines": {"type": "array", "items": ref("Pipeline")},
        "queue": {"type": "string", "description": "the RQ queue (PROGRESS_QUEUE)"},
        "live_workers": {"type": "integer", "minimum": 0,
                         "description": "workers of the queue that have announced their pipelines"},
    },
    "additionalProperties": False,
}


# GET /api/v1/insights (progress_service.insights)
def _closed(required: list[str], properties: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "required": required, "properties": properties,
                              "additionalProperties": False}
    if description:
        schema["description"] = description
    return schema


AT = {"type": "string", "format": "date-time"}
COUNT = {"type": "integer", "minimum": 0}
RATE = nullable("number", minimum=0, maximum=1, description="completed / (completed + failed); "
                "null when neither happened")
SECONDS = nullable("number", minimum=0)
SCHEMAS["DurationPoint"] = _closed(
    ["at", "jobs", "p50", "p90"],
    {"at": {**AT, "description": "the bucket's start"}, "jobs": COUNT, "p50": SECONDS, "p90": SECONDS},
    "p50 and p90, in seconds, of the durations of the sampled jobs that finished in the bucket")
SCHEMAS["PipelineInsights"] = _closed(
    ["pipeline", "finished", "completed", "failed", "canceled", "success_rate", "throughput",
     "job_durations", "steps", "step_durations", "failures", "slowest"],
    {
        "pipeline": {"type": "string"},
        "finished": COUNT, "completed": COUNT, "failed": COUNT, "canceled": COUNT,
        "success_rate": RATE,
        "throughput": {"type": "array", "description": "jobs finished per bucket, by outcome", "items": _closed(
            ["at", "completed", "failed", "canceled", "success_rate"],
            {"at": AT, "completed": COUNT, "failed": COUNT, "canceled": COUNT, "success_rate": RATE})},
        "job_durations": {"type": "array", "items": ref("DurationPoint")},
        "steps": {"type": "array", "items": {"type": "string"}},
        "step_durations": {"type": "array", "items": _closed(
            ["step", "points"], {"step": {"type": "string"},
                                 "points": {"type": "array", "items": ref("DurationPoint")}})},
        "failures": {"type": "array", "description": "the most frequent error texts of failed jobs",
                     "items": _closed(["message", "count", "last_at", "last_job_id"],
                                      {"message": {"type": "string"}, "count": COUNT, "last_at": AT,
                                       "last_job_id": ID})},
        "slowest": {"type": "array", "description": "the longest of the sampled jobs", "items": _closed(
            ["job_id", "paper_id", "status", "duration_seconds", "finished_at"],
            {"job_id": ID, "paper_id": ID, "status": ref("Status"),
             "duration_seconds": {"type": "number", "minimum": 0}, "finished_at": AT})},
    })
SCHEMAS["Insights"] = _closed(
    ["since", "until", "bucket", "pipeline", "sample", "available", "pipelines"],
    {
        "since": AT, "until": AT,
        "bucket": {"enum": ["hour", "day"], "description": "an hour up to a 2-day window, else a day"},
        "pipeline": nullable("string", description="the pipeline asked for; null: every pipeline"),
        "sample": _closed(["jobs", "max_jobs", "truncated"],
                          {"jobs": COUNT, "max_jobs": COUNT, "truncated": {"type": "boolean"}},
                          "the durations are those of the newest max_jobs finished jobs of the window; "
                          "truncated when it held more (the counts cover them all)"),
        "available": {"type": "array", "items": {"type": "string"},
                      "description": "every pipeline with jobs in the window, busiest first"},
        "pipelines": {"type": "array", "items": ref("PipelineInsights")},
    },
    "finished jobs per pipeline over a window, read from PostgreSQL")
