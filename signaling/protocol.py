"""The signaling protocol's wire format: the JSON Schema of incoming messages, parsing with
clear error codes, and the per-connection rate limit. Documented in docs/protocol.md.

The schema is the single machine-readable definition of what a client may send; it is served
at ``GET /api/protocol/schema`` and validated with a Draft 2020-12 validator compiled once.
"""

from __future__ import annotations

import json
import time
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from conference.comments import ACTIONS as COMMENT_ACTIONS
from conference.layouts import MAX_SLOTS

PROTOCOL_VERSION = 1
MAX_AUDIO_SLOTS = 8
OUTGOING_QUEUE = 1000  # messages waiting for a slow client before it is dropped

# `(?!\n)$`: in Python's re (which the validator uses) a bare `$` also matches before a trailing
# newline; the lookahead refuses it and means the same in ECMA regexes, for other validators.
PIN_PATTERN = "^[0-9]{4,12}(?!\n)$"
_ID = {"type": ["string", "integer"], "maxLength": 64}
_IDENTITY = {"type": "string", "minLength": 1, "maxLength": 64}
_ENVELOPE_PROPS: dict[str, Any] = {"id": _ID, "v": {"type": "integer"}}


def _message(type_: str, props: dict[str, Any] | None = None, required: list[str] | None = None) -> dict:
    return {
        "type": "object",
        "properties": {"type": {"const": type_}, **_ENVELOPE_PROPS, **(props or {})},
        "required": ["type", *(required or [])],
        # Strict: a misspelt field is an error the client hears about, not a silently ignored one.
        "additionalProperties": False,
    }


_BOOL = {"type": "boolean"}
# Speaking limits (conference.speaking): up to four hours.
_SECONDS = {"type": "number", "exclusiveMinimum": 0, "maximum": 4 * 3600}
_SECONDS_OR_NULL = {"anyOf": [_SECONDS, {"type": "null"}]}
_CODECS = {
    "type": "array",
    "maxItems": 4,
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 16},
            "payload_type": {"type": "integer", "minimum": 0, "maximum": 127},
            "clock_rate": {"type": "integer", "minimum": 1, "maximum": 192000},
        },
        "required": ["name", "payload_type", "clock_rate"],
        "additionalProperties": False,
    },
}
_KINDS = {
    "type": "object",
    "properties": {"audio": _CODECS, "video": _CODECS},
    "additionalProperties": False,
}
# conference.sfu.plain.PlainOffer as JSON: where the worker listens, what it sends, what it receives.
_PLAIN_OFFER = {
    "type": "object",
    "properties": {
        "address": {
            "type": "array",
            "prefixItems": [
                {"type": "string", "minLength": 1, "maxLength": 64},
                {"type": "integer", "minimum": 1, "maximum": 65535},
            ],
            "minItems": 2,
            "maxItems": 2,
        },
        "publish": _KINDS,
        "receive": _KINDS,
        "video_slots": {"type": "integer", "minimum": 0, "maximum": MAX_SLOTS},
        "audio_slots": {"type": "integer", "minimum": 0, "maximum": MAX_AUDIO_SLOTS},
        # RTP header extensions (RFC 8285 one-byte ids) on what the worker publishes, by URI.
        "extensions": {
            "type": "object",
            "maxProperties": 4,
            "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 14},
        },
    },
    "required": ["address"],
    "additionalProperties": False,
}
MESSAGES: dict[str, dict[str, Any]] = {
    "join": _message(
        "join",
        {
            "device": {"enum": ["venue", "phone"]},
            "publish": {
                "type": "object",
                "properties": {"audio": _BOOL, "video": _BOOL},
                "additionalProperties": False,
            },
            "video_slots": {"type": "integer", "minimum": 0, "maximum": MAX_SLOTS},
            "audio_slots": {"type": "integer", "minimum": 0, "maximum": MAX_AUDIO_SLOTS},
            # A telephone gateway's caller (a `gateway` token only): plain RTP instead of WebRTC.
            "transport": {"enum": ["webrtc", "plain"]},
            "plain": _PLAIN_OFFER,
        },
    )
    | {
        "if": {"properties": {"transport": {"const": "plain"}}, "required": ["transport"]},
        "then": {"required": ["plain"]},
        "dependentRequired": {"plain": ["transport"]},
    },
    "answer": _message("answer", {"sdp": {"type": "string", "minLength": 1}}, ["sdp"]),
    "candidate": _message(
        "candidate",
        {
            "candidate": {
                "type": "object",
                "properties": {
                    "candidate": {"type": "string", "maxLength": 1024},
                    "sdpMid": {"type": ["string", "null"], "maxLength": 64},
                    "sdpMLineIndex": {"type": ["integer", "null"], "minimum": 0, "maximum": 1000},
                    "usernameFragment": {"type": ["string", "null"], "maxLength": 256},
                },
                "required": ["candidate"],
                "additionalProperties": False,
            }
        },
        ["candidate"],
    ),
    "set_program": _message(
        "set_program",
        {
            "layout": {"type": "string", "minLength": 1, "maxLength": 64},
            "slots": {
                "type": "array",
                "maxItems": MAX_SLOTS,
                "items": {"anyOf": [_IDENTITY, {"type": "null"}]},
            },
        },
        ["layout", "slots"],
    ),
    "set_title": _message("set_title", {"title": {"type": "string", "maxLength": 120}}, ["title"]),
    "mute": _message("mute", {"identity": _IDENTITY, "muted": _BOOL}, ["identity", "muted"]),
    "request_unmute": _message("request_unmute", {"identity": _IDENTITY}, ["identity"]),
    "remove": _message("remove", {"identity": _IDENTITY}, ["identity"]),
    "grant_floor": _message(
        "grant_floor",
        {"identity": {"anyOf": [_IDENTITY, {"type": "null"}]}, "limit_s": _SECONDS_OR_NULL},
    ),
    "revoke_floor": _message("revoke_floor"),
    "extend_floor": _message("extend_floor", {"by_s": _SECONDS}, ["by_s"]),
    "set_floor_limits": _message(
        "set_floor_limits",
        {
            "default_s": _SECONDS_OR_NULL,
            "action": {"enum": ["none", "chime", "mute"]},
            "grace_s": {"type": "number", "minimum": 0, "maximum": 600},
            "by_kind": {
                "type": "object",
                "maxProperties": 20,
                "propertyNames": {"minLength": 1, "maxLength": 40},
                "additionalProperties": _SECONDS,
            },
        },
    ),
    "set_dial_in": _message(
        "set_dial_in",
        {
            "pin": {"anyOf": [{"type": "string", "pattern": PIN_PATTERN}, {"type": "null"}]},
            "members": {
                "type": "array",
                "maxItems": 200,
                "items": {
                    "type": "object",
                    "properties": {
                        "identity": _IDENTITY,
                        "name": {"type": "string", "minLength": 1, "maxLength": 100},
                        "pin": {"type": "string", "pattern": PIN_PATTERN},
                    },
                    "required": ["identity", "name", "pin"],
                    "additionalProperties": False,
                },
            },
        },
        ["pin"],
    ),
    "create_screen_link": _message(
        "create_screen_link",
        {
            "identity": _IDENTITY,
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "role": {"enum": ["venue", "viewer"]},
            "ttl": {"type": "integer", "minimum": 60, "maximum": 366 * 24 * 3600},
        },
        ["identity"],
    ),
    "revoke_screen_link": _message(
        "revoke_screen_link", {"link_id": {"type": "string", "minLength": 1, "maxLength": 64}}, ["link_id"]
    ),
    **{
        action: _message(action, {"comment": {"type": "integer", "minimum": 1}}, ["comment"])
        for action in COMMENT_ACTIONS
        if action != "answer_comment"
    },
    "answer_comment": _message(
        "answer_comment",
        {
            "comment": {"type": "integer", "minimum": 1},
            "by": {"type": "string", "minLength": 1, "maxLength": 100},
        },
        ["comment", "by"],
    ),
    # The running order (conference.agenda): items are checked by the command, which names the item.
    "set_agenda": _message(
        "set_agenda", {"items": {"type": "array", "maxItems": 100, "items": {"type": "object"}}}, ["items"]
    ),
    "next_item": _message("next_item", {"take": _BOOL}),
    "goto_item": _message(
        "goto_item", {"index": {"type": "integer", "minimum": 0, "maximum": 99}, "take": _BOOL}, ["index"]
    ),
    "save_preset": _message(
        "save_preset",
        {
            "name": {"type": "string", "minLength": 1, "maxLength": 40},
            "layout": {"type": "string", "minLength": 1, "maxLength": 64},
            "slots": {
                "type": "array",
                "maxItems": MAX_SLOTS,
                "items": {"anyOf": [_IDENTITY, {"type": "null"}]},
            },
        },
        ["name", "layout"],
    ),
    "delete_preset": _message(
        "delete_preset", {"name": {"type": "string", "minLength": 1, "maxLength": 40}}, ["name"]
    ),
    "allow_guests": _message("allow_guests", {"allowed": _BOOL}, ["allowed"]),
    "start_recording": _message("start_recording"),
    "stop_recording": _message("stop_recording"),
    "start_broadcast": _message("start_broadcast"),
    "stop_broadcast": _message("stop_broadcast"),
    "raise_hand": _message("raise_hand"),
    "lower_hand": _message("lower_hand"),
    "release_floor": _message("release_floor"),
    "self_mute": _message("self_mute", {"muted": _BOOL}, ["muted"]),
    "publish": _message("publish", {"audio": _BOOL, "video": _BOOL}, ["audio", "video"]),
    "play_clip": _message(
        "play_clip",
        {
            "clip": {"type": "string", "pattern": "^[0-9a-f]{16}(?!\n)$"},
            "slot": {"type": "integer", "minimum": 0, "maximum": MAX_SLOTS - 1},
            "at_s": {"type": "number", "minimum": 0},
        },
        ["clip"],
    ),
    "pause_clip": _message("pause_clip"),
    "seek_clip": _message("seek_clip", {"at_s": {"type": "number", "minimum": 0}}, ["at_s"]),
    "stop_clip": _message("stop_clip"),
    "sync": _message("sync", {"since": {"type": "integer", "minimum": 0}}, ["since"]),
    "ping": _message("ping"),
    "leave": _message("leave"),
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "urn:remote-consultation:signaling:v1",
    "title": "Signaling protocol v1: messages from client to server",
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"enum": sorted(MESSAGES)}, **_ENVELOPE_PROPS},
    "allOf": [
        {"if": {"properties": {"type": {"const": name}}}, "then": {"$ref": f"#/$defs/{name}"}}
        for name in sorted(MESSAGES)
    ],
    "$defs": MESSAGES,
}

Draft202012Validator.check_schema(SCHEMA)
_VALIDATORS = {name: Draft202012Validator(schema) for name, schema in MESSAGES.items()}
VALIDATOR = Draft202012Validator(SCHEMA)


class ProtocolError(Exception):
    """A message the server refuses: answered with ``{"type": "error", "code": ...}``."""

    def __init__(self, code: str, message: str, request_id: Any = None, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.extra = extra


def _request_id(data: dict[str, Any]) -> Any:
    rid = data.get("id")
    # Echo only ids the schema allows, so an error reply never repeats arbitrary client data.
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        return None
    if isinstance(rid, str) and len(rid) > 64:
        return None
    return rid


def parse_message(raw: str, max_bytes: int) -> dict[str, Any]:
    """A validated request, or ProtocolError with the protocol's error code."""
    if len(raw) > max_bytes or len(raw.encode("utf-8", "surrogatepass")) > max_bytes:
        # Still echo the id when the message parses (aiohttp already capped the frame), so the
        # client waiting on that request hears why instead of timing out.
        rid = None
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            data = None
        if isinstance(data, dict):
            rid = _request_id(data)
        raise ProtocolError("too_large", f"message larger than {max_bytes} bytes", rid)
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("bad_json", "message is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_json", "message must be a JSON object")
    rid = _request_id(data)
    version = data.get("v", PROTOCOL_VERSION)
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError("unsupported_version", f"protocol version {PROTOCOL_VERSION} only", rid)
    type_ = data.get("type")
    if not isinstance(type_, str):
        raise ProtocolError("bad_request", "'type' is required and must be a string", rid)
    validator = _VALIDATORS.get(type_)
    if validator is None:
        raise ProtocolError("unknown_type", f"unknown message type {type_[:64]!r}", rid)
    try:
        error = best_match(validator.iter_errors(data))
    except RecursionError:  # the validator recurses per level: a body nested hundreds deep
        raise ProtocolError("bad_json", "message is nested too deeply", rid) from None
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "message"
        raise ProtocolError("bad_request", f"{type_}: {where}: {error.message[:200]}", rid)
    return data


# RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code. A longer reason makes
# browsers see an abnormal close (1006) instead of the code, and pages then retry forever.
MAX_CLOSE_REASON_BYTES = 123


def close_reason(text: str) -> bytes:
    """``text`` as a close reason: UTF-8, cut at a character boundary to fit a close frame."""
    data = text.encode("utf-8")
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return data
    return data[: MAX_CLOSE_REASON_BYTES - 3].decode("utf-8", "ignore").encode("utf-8") + b"..."


def reply(request_id: Any, result: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "type": "reply", "id": request_id, "result": result or {}}


def error(request_id: Any, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "type": "error",
        "id": request_id,
        "code": code,
        "message": message,
        **extra,
    }


class TokenBucket:
    """Per-connection rate limit: ``rate`` messages a second on average, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> float:
        """0.0 when the message may go through, else the seconds until one more may."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate
