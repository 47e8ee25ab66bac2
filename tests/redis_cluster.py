"""A Redis Cluster of embedded ``redis-server`` nodes on loopback, for the cluster tests."""

from __future__ import annotations

import logging
import os
import socket
import time

from progress_cli.embedded import LOOPBACK, EmbeddedRedis, EmbeddedServerError, find_free_port

logger = logging.getLogger(__name__)

CLUSTER_SLOTS = 16384
CLUSTER_BUS_OFFSET = 10000  # a cluster node also listens on port + 10000
CLUSTER_NODE_ARGS = (
    "--cluster-enabled", "yes",
    "--cluster-config-file", "nodes.conf",  # in the node's own folder
    "--cluster-node-timeout", "5000",
)  # fmt: skip


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def find_free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free as well."""
    for _ in range(100):
        port = find_free_port()
        if port + CLUSTER_BUS_OFFSET <= 65535 and _port_is_free(port + CLUSTER_BUS_OFFSET):
            return port
    raise EmbeddedServerError("found no free port pair for a Redis Cluster node")


class EmbeddedRedisCluster:
    """A Redis Cluster of ``nodes`` masters (no replicas) on loopback, started on construction.

    Every slot is assigned, split evenly; ``.url`` names the first node, which
    is all ``redis.RedisCluster.from_url`` needs. ``.startup_nodes`` lists them all.
    """

    def __init__(
        self,
        nodes: int = 3,
        *,
        binary: str | None = None,
        base_dir: str | os.PathLike[str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        started = time.monotonic()
        self.nodes: list[EmbeddedRedis] = []
        try:
            for _ in range(nodes):
                self.nodes.append(
                    EmbeddedRedis(
                        binary=binary,
                        base_dir=base_dir,
                        extra_args=CLUSTER_NODE_ARGS,
                        choose_port=find_free_cluster_port,
                    )
                )
            self._form(timeout)
        except BaseException:
            self.stop()
            raise
        logger.info(
            "started a Redis Cluster of %d nodes at %s in %.2fs",
            nodes,
            ", ".join(f"{LOOPBACK}:{node.port}" for node in self.nodes),
            time.monotonic() - started,
        )

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.nodes[0].port}"

    @property
    def startup_nodes(self):
        """``redis.cluster.ClusterNode``s, for ``RedisCluster(startup_nodes=...)``."""
        from redis.cluster import ClusterNode

        return [ClusterNode(LOOPBACK, node.port) for node in self.nodes]

    def __enter__(self) -> EmbeddedRedisCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every node and delete their folders; safe to call more than once."""
        for node in self.nodes:
            node.stop()

    def _form(self, timeout: float) -> None:
        clients = [node.client(decode_responses=True, socket_timeout=5) for node in self.nodes]
        try:
            count = len(clients)
            for i, client in enumerate(clients):
                first, last = i * CLUSTER_SLOTS // count, (i + 1) * CLUSTER_SLOTS // count
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", LOOPBACK, node.port)
            deadline = time.monotonic() + timeout
            while not all(_cluster_is_ready(client, count) for client in clients):
                if time.monotonic() > deadline:
                    states = [_cluster_info(client) for client in clients]
                    raise EmbeddedServerError(
                        f"the Redis Cluster was not ready within {timeout:g}s: {states}"
                    )
                time.sleep(0.05)
        finally:
            for client in clients:
                client.close()


def _cluster_info(client) -> dict[str, str]:
    raw = client.execute_command("CLUSTER", "INFO")
    if isinstance(raw, dict):
        return {str(k): str(v) for k, v in raw.items()}
    return dict(line.split(":", 1) for line in str(raw).splitlines() if ":" in line)


def _cluster_is_ready(client, nodes: int) -> bool:
    info = _cluster_info(client)
    return (
        info.get("cluster_state") == "ok"
        and info.get("cluster_known_nodes") == str(nodes)
        and info.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
    )
