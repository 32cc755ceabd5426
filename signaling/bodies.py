"""The JSON Schema of ``POST /api/tokens`` bodies (``POST /api/rooms`` checks its few fields in its
handler): the same strict discipline as the WebSocket protocol (``signaling.protocol``), so a wrong
type is a 400 naming the field instead of being coerced (``"admin": "false"`` was once truthy and
minted an admin token)."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from conference.roles import Role

from .tokens import MAX_TTL_S

_NAME = {"type": "string", "minLength": 1, "maxLength": 64}

TOKEN_REQUEST: dict[str, Any] = {
    "type": "object",
    "properties": {
        "room": _NAME,
        "identity": _NAME,
        "name": {"type": "string", "minLength": 1, "maxLength": 100},
        "role": {"enum": [str(r) for r in Role]},
        # JSON Schema's integer admits 2.0; the handler refuses anything but a JSON integer.
        "ttl": {"type": "integer", "minimum": 1, "maximum": MAX_TTL_S},
        "admin": {"type": "boolean"},
    },
    "required": ["room", "identity", "name", "role"],
    "additionalProperties": False,
}

_VALIDATORS = {
    "token": Draft202012Validator(TOKEN_REQUEST),
}


def body_error(kind: str, data: Any) -> str | None:
    """None when ``data`` fits the schema, else a message naming the first offending field."""
    try:
        error = best_match(_VALIDATORS[kind].iter_errors(data))
    except RecursionError:
        return "body is nested too deeply"
    if error is None:
        return None
    where = ".".join(str(p) for p in error.absolute_path) or "body"
    return f"{where}: {error.message[:200]}"
