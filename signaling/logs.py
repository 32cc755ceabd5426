"""The server's log lines: text (default) or one JSON object per line (``--log-format json``), with
the node, and the room and identity a line is about, on every line.

The room and identity come from a context variable set where a request starts (a socket once its
token is checked, a REST call under ``/api/rooms/{room}``): asyncio copies the context into every
task started from there, so whatever those handlers log carries them. Secrets never reach a log:
the access log redacts tokens and link signatures (``serve.AccessLog``), and the JSON writer drops
any ``token``/``secret``/``admin_key`` field a caller passes as ``extra``.
"""

from __future__ import annotations

import json
import logging
import time
from contextvars import ContextVar
from typing import Any

from aiohttp import web

# (room, identity) of what the current task serves; None where it serves no one in particular.
LOG_CONTEXT: ContextVar[tuple[str | None, str | None]] = ContextVar("log_context", default=(None, None))
SECRET_FIELDS = frozenset({"token", "secret", "admin_key", "password", "pin"})
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def set_context(room: str | None, identity: str | None = None) -> None:
    LOG_CONTEXT.set((room, identity))


class JsonFormatter(logging.Formatter):
    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        room, identity = LOG_CONTEXT.get()
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "node": self.node,
            "room": getattr(record, "room", room),
            "identity": getattr(record, "identity", identity),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line and key not in SECRET_FIELDS:
                line[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The plain format, with ``room/identity`` after the level when the line is about someone."""

    def __init__(self, node: str) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(where)s%(message)s")
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        room, identity = LOG_CONTEXT.get()
        room = getattr(record, "room", room)
        identity = getattr(record, "identity", identity)
        record.where = f"[{room}/{identity or '-'}] " if room else ""
        return super().format(record)


def configure(level: str, log_format: str, node: str) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(node) if log_format == "json" else TextFormatter(node))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


@web.middleware
async def room_context(request: web.Request, handler: Any) -> web.StreamResponse:
    """REST calls about a room log with its name (the socket handler sets room and identity)."""
    room = request.match_info.get("room")
    if room is not None:
        set_context(room)
    return await handler(request)
