"""JSON error answers of the REST API, shared by the server and the clerk sub-application:
``{"error": code, "message": ...}`` with the HTTP status the protocol's error code stands for."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

STATUS_FOR_CODE = {
    "bad_request": 400,
    "bad_json": 400,
    "unknown_layout": 400,
    "unknown_type": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "room_full": 409,
    "floor_queue_empty": 409,
    "too_large": 413,
    "unavailable": 503,
}

_EXCEPTIONS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    403: web.HTTPForbidden,
    404: web.HTTPNotFound,
    409: web.HTTPConflict,
    503: web.HTTPServiceUnavailable,
}


def json_error(status: int, code: str, message: str, *, max_size: int = 0, **extra: Any) -> web.HTTPException:
    body = json.dumps({"error": code, "message": message})
    if status == 413:
        return web.HTTPRequestEntityTooLarge(
            max_size=max_size, actual_size=extra.get("size", 0), text=body, content_type="application/json"
        )
    headers = {"Retry-After": "2"} if status == 503 else None
    return _EXCEPTIONS.get(status, web.HTTPInternalServerError)(
        text=body, content_type="application/json", headers=headers
    )
