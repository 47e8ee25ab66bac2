"""The store on a real three-node Redis Cluster started by the test itself."""

from __future__ import annotations

import threading

import pytest

from progress_service import Settings

pytestmark = pytest.mark.backend


def test_jobs_spread_over_nodes_obey_the_rules(cluster_store):
    store = cluster_store
    client = store.client
    job_ids = [f"job-{i}" for i in range(12)]
    nodes = set()
    for job_id in job_ids:
        store.create_job(job_id, "31452104")
        slot = client.keyslot(store.keys.job(job_id))
        assert slot == client.keyslot(store.keys.history(job_id)), "one job, one slot"
        nodes.add(client.nodes_manager.get_node_from_slot(slot).name)
    assert len(nodes) >= 2, "the jobs should land on several nodes"

    for job_id in job_ids:
        assert store.update(job_id, progress_percent=40, current_step="generate-audio").reason == "ok"
        assert store.update(job_id, progress_percent=10).reason == "regression"
        assert store.update(job_id, progress_percent=40, current_step="generate-audio").reason == "unchanged"
        snap = store.get(job_id)
        assert (snap["progress_percent"], snap["status"], snap["seq"]) == (40, "running", 2)
        assert [h["seq"] for h in store.history(job_id)] == [1, 2]
    assert store.update("nobody", progress_percent=1).reason == "not_found"
    assert {s["job_id"] for s in store.list_jobs(limit=50)} == set(job_ids)


def test_subscribe_on_a_cluster(cluster_store):
    store = cluster_store
    store.create_job("sub-1", "p1")
    seen = []
    first = threading.Event()

    def follow():
        for snap in store.subscribe("sub-1", timeout=15):
            seen.append(snap)
            first.set()

    t = threading.Thread(target=follow)
    t.start()
    assert first.wait(5)
    store.update("sub-1", progress_percent=50, status="running")
    store.update("sub-1", status="completed")
    t.join(15)
    assert not t.is_alive()
    assert [s["seq"] for s in seen] == [1, 2, 3]
    assert seen[-1]["status"] == "completed"


def test_a_cluster_store_without_its_own_url_is_a_clear_config_error():
    """RQ cannot use a cluster: REDIS_URL alone must not silently point it at one."""
    from progress_service.config import ConfigError

    with pytest.raises(ConfigError, match="PROGRESS_REDIS_URL"):
        Settings.from_env({"REDIS_URL": "redis://127.0.0.1:7000/0", "PROGRESS_REDIS_CLUSTER": "1"})


def test_update_many_on_a_cluster_pipelines_per_node_and_keeps_every_rule(cluster_store):
    """update_many sends one pipeline per node (not one round trip per update), in order."""
    from progress_service.errors import InvalidInput

    store = cluster_store
    job_ids = [f"many-{i}" for i in range(12)]
    for job_id in job_ids:
        store.create_job(job_id, "31452104")
    evalsha_before = {name: node.redis_connection.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
                      for name, node in store.client.nodes_manager.nodes_cache.items()}
    results = store.update_many([{"job_id": j, "progress_percent": 40} for j in job_ids]
                                + [{"job_id": job_ids[0], "progress_percent": 10},
                                   {"job_id": "nobody", "progress_percent": 1}])
    assert [r.reason for r in results] == ["ok"] * 12 + ["regression", "not_found"]
    assert [r.seq for r in results[:12]] == [2] * 12
    nodes_used = [name for name, node in store.client.nodes_manager.nodes_cache.items()
                  if node.redis_connection.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)
                  > evalsha_before[name]]
    assert len(nodes_used) >= 2
    assert all(store.get(j)["progress_percent"] == 40 for j in job_ids)
    with pytest.raises(InvalidInput, match="current_step"):
        store.update_many([{"job_id": job_ids[1], "current_step": "no-such-step"}])
