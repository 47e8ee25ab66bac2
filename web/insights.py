"""Insights in pictures: ``/insights/`` and ``GET /api/v1/insights?pipeline=&since=``.

Both answer the same numbers (``progress_service.insights``, read from PostgreSQL):
the API as JSON, the page drawn with Chart.js (``web/static/vendor/chart.umd.js``,
vendored) by ``web/static/insights.js`` from the page's config. Like the other lists
they need the API token under ``PROGRESS_READ_AUTH=token``. PostgreSQL down is a 503
within the mirror's deadline (``web.job_lookup.MIRROR_TIMEOUT``), or at once while
it is known to be down.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, g, jsonify, render_template, request

from progress_service.errors import InvalidInput
from progress_service.insights import MAX_WINDOW, insights, parse_since
from progress_service.models import validate_id

from .job_lookup import mirror

bp = Blueprint("insights", __name__)

PARAMS = ("pipeline", "since", "token")  # token: web.auth's
RANGES = (("24h", "last 24 hours"), ("48h", "last 2 days"), ("7d", "last 7 days"),
          ("30d", "last 30 days"), (f"{MAX_WINDOW.days}d", f"last {MAX_WINDOW.days} days"))


def read_insights() -> dict[str, Any]:
    """The report of this request's ``?pipeline=&since=`` (``InvalidInput`` for bad ones)."""
    args = request.args
    unknown = sorted(k for k in args if k not in PARAMS and not k.startswith("_"))
    if unknown:
        raise InvalidInput(f"unknown query parameter {unknown[0]!r} (allowed: {', '.join(PARAMS)})")
    pipeline = args.get("pipeline") or None
    if pipeline is not None:
        validate_id(pipeline, "pipeline")
    now = datetime.now(UTC)
    since = parse_since(args.get("since") or None, now)
    return insights(mirror(), since=since, now=now, pipeline=pipeline)


@bp.get("/api/v1/insights")
def insights_json():
    return jsonify(read_insights())


@bp.get("/insights/")
def insights_page():
    report = read_insights()
    since = request.args.get("since") or "24h"
    ranges = list(RANGES) if since in dict(RANGES) else [*RANGES, (since, f"since {since}")]
    config = {"report": report}  # insights.js draws the charts from it
    token = g.get("read_token")  # PROGRESS_READ_AUTH=token: the form and the links carry it on
    return render_template("insights.html", report=report, config=config, ranges=ranges, since=since,
                           token=token)
