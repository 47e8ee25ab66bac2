"""What a part of ``ProgressStore`` kept in a module of its own (``mirror_side``,
``batch_side``) uses of the store: its client, keys, scripts, settings and error mapping."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..config import Settings
    from ..keys import Keys
    from ..scripts import Scripts
    from . import RedisClient


class StorePart:
    """The base of ``ProgressStore``'s parts: the store's attributes, for the type checker."""

    if TYPE_CHECKING:  # ProgressStore's, which each part is a part of
        client: RedisClient
        keys: Keys
        scripts: Scripts
        settings: Settings
        is_cluster: bool

        def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any: ...
        def _redis(self, call: Callable[[], Any]) -> Any: ...
        def server_time_ms(self) -> int: ...
