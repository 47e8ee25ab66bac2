"""TcpProxy: a loopback TCP proxy to a test's server (Redis or PostgreSQL).

A test points the code at the proxy, takes the proxy down to see what the code
does while its backend is away, and brings it back on the same port; or
blackholes it (a network partition: nothing arrives, nothing is refused) and heals it.
"""

from __future__ import annotations

import socket
import threading
import urllib.parse

from progress_cli.embedded import find_free_port

DEFAULT_PORTS = {"redis": 6379, "postgresql": 5432, "postgres": 5432}


class TcpProxy:
    """A loopback TCP proxy to the server of ``target_url``, on a free port of its own.

    ``url`` is ``target_url`` through the proxy (same user, database and options). The
    proxy starts down: ``up()`` listens, ``down()`` stops listening and cuts every open
    connection, as a crashed server would; ``up()`` again listens on the same port.
    ``blackhole()`` stops forwarding but keeps every connection open and still accepts
    new ones, as a partitioned network drops packets; ``heal()`` forwards again, what
    was held back first.
    """

    def __init__(self, target_url: str) -> None:
        parts = urllib.parse.urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS[parts.scheme])
        self.port = find_free_port()
        user, at, _ = parts.netloc.rpartition("@")
        self.url = urllib.parse.urlunsplit(parts._replace(netloc=f"{user}{at}127.0.0.1:{self.port}"))
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Stop listening and cut every open connection: the server is gone until ``up()``."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (a bare close would not)
            except OSError:
                pass
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def blackhole(self) -> None:
        """Forward nothing from now on, in either direction, and close nothing."""
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:  # the server itself is away: refuse this one as it would
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self._flowing.wait()  # blackholed: held here, the connection left open
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
