"""Read tokens: signed, expiring leave to read one job or one batch (``PROGRESS_READ_AUTH=token``).

A read token is itsdangerous' ``URLSafeSerializer`` output (HMAC-SHA256 keyed
by ``PROGRESS_SECRET_KEY``) over ``{"job_id": ...}`` or ``{"batch_id": ...}``
and ``"exp"``, the second it expires (Unix time). The expiry is inside the
signed payload, so each token has its own lifetime (``POST /api/v1/tokens``
takes a ``ttl``) and nobody can stretch it. Nothing is stored: a token is
valid while its signature holds and ``exp`` is ahead; changing the key
revokes every token at once.

Who may use one, and for what, is decided in one place: ``web.auth.guard_reads``.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeSerializer

from progress_service.config import Settings
from progress_service.errors import InvalidInput, Unauthorized
from progress_service.models import is_valid_id, iso_ms, validate_id

SALT = "progress-service.read-token"  # a token signed for anything else with the same key never passes
DEFAULT_TTL = 7 * 24 * 3600  # seconds; as long as a finished job stays in Redis by default
MAX_TTL = 366 * 24 * 3600
KINDS = ("job", "batch")


@dataclass(frozen=True)
class ReadScope:
    """What one read token allows: reading the job (or batch) ``id`` until ``expires`` (Unix seconds)."""

    kind: str  # "job" | "batch"
    id: str
    expires: int

    @property
    def expires_at(self) -> str:
        at = iso_ms(self.expires * 1000)
        assert at is not None  # iso_ms answers None for None alone
        return at

    def describe(self) -> str:
        return f"{self.kind} {self.id}"


def _serializer(secret_key: str) -> URLSafeSerializer:
    return URLSafeSerializer(secret_key, salt=SALT, signer_kwargs={"digest_method": hashlib.sha256})


def ttl_seconds(raw: object) -> int:
    """A token's lifetime from a request: a whole number of seconds from 1 to ``MAX_TTL``."""
    if raw is None:
        return DEFAULT_TTL
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_TTL:
        raise InvalidInput(f"ttl must be a whole number of seconds from 1 to {MAX_TTL}, got {raw!r}")
    return raw


def mint(secret_key: str, kind: str, scope_id: str, *, ttl: int = DEFAULT_TTL,
         now: float | None = None) -> tuple[str, ReadScope]:
    """A read token for the job or batch ``scope_id``, valid for ``ttl`` seconds from ``now``."""
    if kind not in KINDS:
        raise ValueError(f"a read token is for a job or a batch, not {kind!r}")
    validate_id(scope_id, f"{kind}_id")
    expires = int((time.time() if now is None else now) + ttl)
    token = _serializer(secret_key).dumps({f"{kind}_id": scope_id, "exp": expires})
    return token, ReadScope(kind, scope_id, expires)


def verify(secret_key: str, token: str, *, now: float | None = None) -> ReadScope:
    """The scope ``token`` grants, or ``Unauthorized``: a wrong signature (another key, a
    changed payload), a payload that is not a read token's, or an expiry gone by."""
    try:
        payload = _serializer(secret_key).loads(token)
    except BadSignature:
        raise Unauthorized("the token is neither the API token nor a valid read token") from None
    if not isinstance(payload, dict) or set(payload) not in ({"job_id", "exp"}, {"batch_id", "exp"}):
        raise Unauthorized("the token is not a read token")
    kind = "job" if "job_id" in payload else "batch"
    scope_id, expires = payload[f"{kind}_id"], payload["exp"]
    if not is_valid_id(scope_id) or isinstance(expires, bool) or not isinstance(expires, int):
        raise Unauthorized("the token is not a read token")
    scope = ReadScope(kind, scope_id, expires)
    if (time.time() if now is None else now) >= expires:
        raise Unauthorized(f"the read token expired at {scope.expires_at}")
    return scope


def for_answer(settings: Settings, kind: str, scope_id: str) -> str | None:
    """The read token a submit answer carries: one for ``scope_id`` when reads need a token, else None."""
    if not settings.reads_need_token or settings.secret_key is None:
        return None
    return mint(settings.secret_key, kind, scope_id)[0]
