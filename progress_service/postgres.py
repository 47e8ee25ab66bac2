"""Bounded access to PostgreSQL: no caller hangs on a partitioned network, none waits on another.

A partition drops packets: nothing answers, nothing is refused, and a query on
an open connection would wait for ever (the server's ``statement_timeout`` never
arrives, nor would a cancel). :class:`PostgresPool` bounds every access::

    pool = PostgresPool(database_url, timeout=2.2, connect_timeout=2, pool_size=4)
    rows = pool.run(lambda conn: conn.execute("SELECT 1").fetchall())

- one deadline per access (``timeout`` seconds) covers waiting for a free
  connection, connecting (``connect_timeout``, at libpq's 2 s floor) and the
  work; at the deadline the connection's socket is cut (:class:`Deadline`), which
  wakes psycopg at once; the server also gets ``statement_timeout``;
- up to ``pool_size`` connections, kept open between accesses: a caller never
  waits on another's hung connection, only (within its deadline) for a free one;
- once an access got no answer (``psycopg.OperationalError``), the next ones fail
  at once with ``PostgresUnavailable`` for ``recheck_after`` seconds instead of
  each waiting out the same partition.

One limit: libpq's convention gives ``connect_timeout`` to each address a host
name resolves to, so a name with two addresses (``localhost``: ::1 and
127.0.0.1) may take twice as long to fail to connect; name an address.

``run`` raises psycopg's errors as they are (the caller maps them: see
``progress_service.mirror``), and ``PostgresUnavailable`` when it did not try.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .errors import PostgresUnavailable

MIN_CONNECT_TIMEOUT = 2  # seconds: libpq's (and psycopg's) floor for connect_timeout
T = TypeVar("T")


class PostgresPool:
    """A few autocommit connections to ``database_url``, each access bounded by ``timeout``."""

    def __init__(self, database_url: str, *, timeout: float, connect_timeout: float = 5.0,
                 pool_size: int = 4, recheck_after: float = 1.0,
                 application_name: str = "progress-service") -> None:
        if timeout < MIN_CONNECT_TIMEOUT or pool_size < 1:
            raise ValueError(f"timeout must be at least {MIN_CONNECT_TIMEOUT}s and pool_size at least 1")
        self.database_url = database_url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.recheck_after = recheck_after
        self.application_name = application_name
        self._idle: list[psycopg.Connection] = []
        self._slots = threading.BoundedSemaphore(pool_size)
        self._lock = threading.Lock()  # guards _idle and _closed; never held over I/O
        self._closed = False
        self._down: tuple[float, str] | None = None  # (monotonic time to try again, why)

    def run(self, work: Callable[[psycopg.Connection], T]) -> T:
        """``work(connection)`` on a pooled connection, all within ``timeout`` seconds.

        A connection that failed, or whose deadline passed, is closed, not pooled.
        """
        deadline = time.monotonic() + self.timeout
        self._fail_fast()
        if not self._slots.acquire(timeout=self.timeout):
            raise PostgresUnavailable(f"postgres: no connection came free within {self.timeout:g}s "
                                      f"(every one is waiting on PostgreSQL)")
        conn = None
        try:
            self._fail_fast()  # it may have failed for another caller meanwhile
            conn = self._take_idle() or self._connect(deadline)
            with Deadline(conn, deadline - time.monotonic()) as watch:
                try:
                    result = work(conn)
                except psycopg.OperationalError as exc:
                    if watch.expired:
                        raise psycopg.OperationalError(
                            f"no answer within {self.timeout:g}s") from exc
                    raise
            if watch.expired:  # answered just in time, but the socket is cut now
                conn.close()
        except psycopg.Error as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, psycopg.OperationalError):
                self._down = (time.monotonic() + self.recheck_after, one_line(exc))
            raise
        finally:
            if conn is not None:
                self._put_back(conn)
            self._slots.release()
        self._down = None
        return result

    def close(self) -> None:
        """Close the idle connections (and each busy one when its caller is done)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def _connect(self, deadline: float) -> psycopg.Connection:
        left = min(self.connect_timeout, deadline - time.monotonic())
        if left < MIN_CONNECT_TIMEOUT - 0.1:  # psycopg would wait 2 s anyway: past the deadline
            raise psycopg.OperationalError(f"no answer within {self.timeout:g}s")
        # Parsed here, not in __init__: a malformed URL is a failed access (503 on the web).
        params = _conninfo(self.database_url, self.timeout)
        return psycopg.connect(**params, autocommit=True, application_name=self.application_name,
                               connect_timeout=max(MIN_CONNECT_TIMEOUT, int(left)))

    def _take_idle(self) -> psycopg.Connection | None:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        return None

    def _put_back(self, conn: psycopg.Connection) -> None:
        if conn.closed or conn.broken:
            return
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        conn.close()

    def _fail_fast(self) -> None:
        """While PostgreSQL is known not to answer, say so at once instead of trying again."""
        down = self._down
        if down is not None and time.monotonic() < down[0]:
            raise PostgresUnavailable(f"postgres: {down[1]} (next try in "
                                      f"{max(down[0] - time.monotonic(), 0):.1f}s)")


def one_line(exc: BaseException) -> str:
    """The first line of an error's text (psycopg's run over several)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _conninfo(database_url: str, timeout: float) -> dict[str, Any]:
    """``database_url``'s connection parameters, with the server-side statement timeout
    added to its ``options`` (kept: a ``search_path`` there still applies)."""
    params = conninfo_to_dict(database_url)
    options = f"{params.get('options') or ''} -c statement_timeout={int(timeout * 1000)}"
    params.update(options=options.strip())
    for ours in ("connect_timeout", "application_name"):  # given by PostgresPool._connect
        params.pop(ours, None)
    return params


class Deadline:
    """Cuts a connection's socket (``shutdown``) if the code inside takes more than ``seconds``.

    The statement timeout is the server's; a partitioned network delivers nothing,
    not even the cancel, and psycopg would wait for ever. A shutdown (of a duplicate
    of the socket, from a timer thread) wakes the wait at once: psycopg raises
    ``OperationalError``, and ``expired`` says why.
    """

    def __init__(self, conn: psycopg.Connection, seconds: float) -> None:
        self.expired = False
        self._sock = socket.socket(fileno=os.dup(conn.fileno()))
        self._timer = threading.Timer(max(seconds, 0.0), self._cut)
        self._timer.daemon = True
        self._lock = threading.Lock()
        self._done = False

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        with self._lock:
            self._done = True
            self._sock.close()

    def _cut(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            with suppress(OSError):  # not connected (any more): nothing to cut
                self._sock.shutdown(socket.SHUT_RDWR)
