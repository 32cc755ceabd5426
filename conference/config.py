"""Server settings and where they come from.

Precedence, lowest first: built-in defaults < TOML config file (``--config``) < ``CONFERENCE_*``
environment variables < command-line flags. The TOML file uses the field names below as top-level
keys (``[[ice_servers]]`` tables for STUN/TURN); an environment variable is the field name in upper
case with the ``CONFERENCE_`` prefix (lists as JSON or comma-separated, booleans as true/false/1/0).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "CONFERENCE_"
MIN_SECRET_BYTES = 32  # HS256 keys and the admin key: below this a token's secret is crackable


class ConfigError(ValueError):
    """A setting with a bad value; the message names the setting and where it came from."""


MEDIA_BACKEND_NAMES = ("sfu", "relay_baseline")
VIDEO_CODEC_NAMES = ("vp8", "h264")


@dataclass(slots=True)
class Settings:
    # 127.0.0.1 by default: nothing is exposed until asked. Venues on the LAN need 0.0.0.0 (or the
    # machine's address) and TLS, since browsers only open cameras on secure origins.
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    secret: str | None = None  # None: secret_file, else <data_dir>/secret, generated when missing
    admin_key: str | None = None  # None: admin_key_file, else <data_dir>/admin_key, generated
    # Files holding them (kept out of the process list and the environment); 32 bytes at least.
    secret_file: Path | None = None
    admin_key_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Handed to every client in the join reply and used by the server's own peer connections.
    # Empty by default: aiortc would otherwise ask a public STUN server.
    ice_servers: list[dict[str, Any]] = field(default_factory=list)
    # A TURN server with time-limited credentials (coturn's use-auth-secret, the "TURN REST API"):
    # every join gets its own username ("expiry:identity") and HMAC credential, valid turn_ttl_s;
    # no fixed password in any page. docs/deploy.md has the coturn side.
    turn_urls: list[str] = field(default_factory=list)
    turn_secret: str | None = None
    turn_ttl_s: int = 12 * 3600
    # "relay": the pages use only TURN relay candidates (a venue whose network allows nothing else,
    # or to check the relay); "all" (default) lets ICE choose.
    ice_transport_policy: str = "all"
    rtc_port_min: int | None = None
    rtc_port_max: int | None = None
    rtc_interfaces: list[str] = field(default_factory=list)
    rtc_announced_address: str | None = None
    max_endpoints: int = 50
    # REMB sent to every video publisher: the browser keeps its camera under this bitrate.
    publish_max_bitrate: int = 1_500_000
    # The forwarding core's native send (conference/sfu/_fastpath.c: header join, SRTP protect and
    # sendto in one call per copy) when it was built; false forces the pure-Python path.
    native_send: bool = True
    # Offer RTX (RFC 4588) on what subscribers receive, so answered NACKs go out on their own stream.
    # Off by default until measured: in the impaired-link test a venue froze more with it on in one
    # series of runs, not settled (docs/performance.md, "Media over real networks").
    subscriber_rtx: bool = False
    # Let the server's send-side estimate of a subscriber's downlink (transport-cc feedback, Chromium)
    # drive its layer choice in place of the loss rule. Off until it is tuned: behind a 1 Mbit/s
    # downlink it froze the grid's slots for 4-19 s of 20 where the loss rule froze none, and its
    # budget recovered slowly (docs/performance.md, "Transport-cc from subscribers, wired"). Off,
    # the slots are not offered transport-cc at all (no stamping, no feedback to parse: 15-20 % of
    # the server's CPU at 50 endpoints for a figure nothing used).
    send_side_bwe: bool = False
    # Ask publishers for three simulcast layers (browsers send them) and give each subscriber's slot
    # the layer its tile needs (conference.layer_choice); false: one stream per publisher, as sent.
    simulcast: bool = True
    # Video codecs offered to every endpoint, in order of preference (vp8, h264): the first both
    # sides know is what publishers send and slots carry. "h264,vp8" for venues whose screens
    # decode H.264 in hardware (set-top boxes, conference codecs); simulcast works with either.
    video_codecs: list[str] = field(default_factory=lambda: ["vp8", "h264"])
    # Preview slots of the chair's console: one per other endpoint the room holds, at most this many
    # (None: no cap beyond max_endpoints - 1).
    max_previews: int | None = None
    # Plain-RTP transports (workers in other processes: live stream, telephone gateway) bind here.
    plain_rtp_host: str = "127.0.0.1"
    reconnect_grace_s: float = 30.0
    # Lifetime of the session credentials a joined endpoint is handed (renewed every third of it):
    # how long a screen may stay away and still come back after its own token expired.
    session_ttl_s: int = 600
    auto_record: bool = False
    redis_url: str | None = None
    # This server process's name among several (metrics; rooms placed on nodes): default host name.
    node_id: str | None = None
    # How clients and other nodes reach this node (http(s)://host:port, or a path behind a proxy);
    # None: public_url. Joins of a room hosted elsewhere are sent to the host's (docs/architecture.md).
    advertise_url: str | None = None
    # Where /metrics is also served without the admin key ("host:port"), e.g. an address only the
    # Prometheus host reaches; on the main port it always needs the admin key.
    metrics_listen: str | None = None
    # Without redis_url: "sqlite" (<data_dir>/rooms.sqlite3, survives restarts) or "memory".
    room_store: str = "sqlite"
    ws_max_message_bytes: int = 262144  # a chair's answer has ~64 m-lines
    ws_rate: float = 20.0  # messages per second per connection (token bucket refill)
    ws_burst: int = 40  # token bucket size
    # Bytes of messages waiting for one connection before it is closed (1008) as not reading.
    ws_max_queued_bytes: int = 4 * 1024 * 1024
    rest_rate: float = 20.0  # REST requests per second per credential (or address without one)
    rest_burst: int = 40
    # Behind a reverse proxy every request comes from the proxy: take the client's address from the
    # last X-Forwarded-For entry instead (only when the proxy sets it, or clients could choose it).
    trust_forwarded_for: bool = False
    media: bool = True  # False: signaling only (NullMedia)
    media_backend: str = "sfu"  # "sfu", or "relay_baseline" (decode/re-encode, for comparison)
    recording_retention_days: int | None = None  # None: keep recordings until deleted
    recording_auto_render: bool = True  # render the default layout as soon as a recording stops
    recording_fsync: bool = False  # fsync each recorded track file as it is closed (durable, slower)
    shutdown_timeout_s: float = 5.0
    # The public live stream's compositor (``conference live``, one process per broadcasting room).
    live_size: str = "1280x720"
    live_fps: int = 25
    live_threads: int = 1  # x264 threads of each compositor; 0 lets x264 choose
    live_preset: str = "ultrafast"  # x264 preset
    # "local": the server starts each compositor itself; "remote": compositors run on other machines
    # (``conference live --server URL``), connect with the admin key and upload the HLS files here.
    live_compositor: str = "local"
    # Addresses a remote compositor may receive the room's plain RTP on (besides this machine's own).
    live_hosts: list[str] = field(default_factory=list)
    # Where the public reaches the server (https://live.example.org), for the short link and its QR
    # code; None: the address the request came to.
    public_base_url: str | None = None
    # Live-stream file requests a second the server answers itself (bursts of twice that); beyond it
    # 503. One viewer makes about one a second; an audience of thousands belongs behind nginx or a CDN.
    live_requests_per_s: float = 1200.0
    # The public's comments and likes (signaling.comments): token buckets per browser (signed cookie)
    # and per address; an address may hold a venue's or a mobile network's many phones.
    comment_posts_per_min: float = 6.0
    comment_posts_per_min_ip: float = 60.0
    like_posts_per_s: float = 2.0  # the page sends one a second at most
    like_posts_per_s_ip: float = 100.0
    # A comment containing one of these (case, spacing and punctuation ignored) waits for a moderator.
    comment_blocked_words: list[str] = field(default_factory=list)
    # The largest film a chair may upload as a prepared clip (bytes); 0 refuses every upload.
    clip_max_bytes: int = 1024 * 1024 * 1024

    def __post_init__(self) -> None:
        self.validate()

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def public_url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    def validate(self) -> None:
        if self.media_backend not in MEDIA_BACKEND_NAMES:
            raise ConfigError(f"media_backend must be one of {', '.join(MEDIA_BACKEND_NAMES)}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key must be given together")
        if (self.rtc_port_min is None) != (self.rtc_port_max is None):
            raise ConfigError("rtc_port_min and rtc_port_max must be given together")
        low, high = self.rtc_port_min, self.rtc_port_max
        if low is not None and high is not None and not 1024 <= low <= high <= 65535:
            raise ConfigError(f"rtc port range must satisfy 1024 <= min <= max <= 65535, got {low}-{high}")
        if self.max_endpoints < 1:
            raise ConfigError(f"max_endpoints must be at least 1, got {self.max_endpoints}")
        if not 2 <= self.session_ttl_s <= 86400:
            raise ConfigError(f"session_ttl_s must be 2-86400 seconds, got {self.session_ttl_s}")
        if self.reconnect_grace_s < 0:
            raise ConfigError("reconnect_grace_s must not be negative")
        if self.ws_max_message_bytes < 1024:
            raise ConfigError("ws_max_message_bytes must be at least 1024")
        if self.ws_max_queued_bytes < self.ws_max_message_bytes:
            raise ConfigError("ws_max_queued_bytes must be at least ws_max_message_bytes")
        for name in ("secret", "admin_key"):
            value = getattr(self, name)
            if value is not None and len(value.encode("utf-8")) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"{name} must be at least {MIN_SECRET_BYTES} bytes (a short one is guessed offline"
                    f" from any token); leave it unset to have one generated in the data directory"
                )
            if value is not None and getattr(self, f"{name}_file") is not None:
                raise ConfigError(f"give {name} or {name}_file, not both")
        if self.rest_rate <= 0 or self.rest_burst < 1:
            raise ConfigError("rest_rate must be positive and rest_burst at least 1")
        if self.ws_rate <= 0 or self.ws_burst < 1:
            raise ConfigError("ws_rate must be positive and ws_burst at least 1")
        if self.room_store not in ("sqlite", "memory"):
            raise ConfigError(f"room_store must be sqlite or memory, got {self.room_store!r}")
        if self.recording_retention_days is not None and self.recording_retention_days < 1:
            raise ConfigError("recording_retention_days must be at least 1 (or unset to keep forever)")
        for server in self.ice_servers:
            _check_ice_server(server)
        if bool(self.turn_urls) != bool(self.turn_secret):
            raise ConfigError("turn_urls and turn_secret go together (coturn's static-auth-secret)")
        if any(not u.startswith(("turn:", "turns:")) for u in self.turn_urls):
            raise ConfigError(f"turn_urls must be turn: or turns: URLs, got {self.turn_urls}")
        if self.ice_transport_policy not in ("all", "relay"):
            raise ConfigError("ice_transport_policy must be all or relay")
        codecs = [c.lower() for c in self.video_codecs]
        if not codecs or set(codecs) - set(VIDEO_CODEC_NAMES) or len(set(codecs)) != len(codecs):
            raise ConfigError(
                f"video_codecs must name {' and/or '.join(VIDEO_CODEC_NAMES)} once each,"
                f" got {self.video_codecs}"
            )
        if self.turn_ttl_s < 60:
            raise ConfigError("turn_ttl_s must be at least 60")
        if not re.fullmatch(r"\d{2,4}x\d{2,4}", self.live_size):
            raise ConfigError(f"live_size must be WIDTHxHEIGHT, got {self.live_size!r}")
        if self.clip_max_bytes < 0:
            raise ConfigError("clip_max_bytes must not be negative")
        if self.live_requests_per_s <= 0:
            raise ConfigError("live_requests_per_s must be positive")
        for name in (
            "comment_posts_per_min",
            "comment_posts_per_min_ip",
            "like_posts_per_s",
            "like_posts_per_s_ip",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        for host in self.live_hosts:
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ConfigError(f"live_hosts holds IP addresses, got {host!r}") from None
        if self.live_compositor not in ("local", "remote"):
            raise ConfigError(f"live_compositor must be local or remote, got {self.live_compositor!r}")
        if not 1 <= self.live_fps <= 60 or self.live_threads < 0:
            raise ConfigError("live_fps must be 1-60 and live_threads at least 0")

    def public_json(self) -> dict[str, Any]:
        """What pages may know: nothing secret (no TURN credentials, keys or paths)."""
        return {
            "max_endpoints": self.max_endpoints,
            "reconnect_grace_s": self.reconnect_grace_s,
            "ws_max_message_bytes": self.ws_max_message_bytes,
            "ws_rate": self.ws_rate,
            "ws_burst": self.ws_burst,
            "media": self.media,
            "tls": self.tls,
            "auto_record": self.auto_record,
        }


def _check_ice_server(server: Any) -> None:
    if not isinstance(server, dict):
        raise ConfigError(f"ice_servers entries must be tables/objects, got {server!r}")
    urls = server.get("urls")
    url_list = [urls] if isinstance(urls, str) else urls
    if not isinstance(url_list, list) or not url_list or not all(isinstance(u, str) for u in url_list):
        raise ConfigError(f"ice server needs 'urls' (a string or list of strings): {server!r}")
    for url in url_list:
        if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
            raise ConfigError(f"ice server url must start with stun:, stuns:, turn: or turns:, got {url!r}")
    unknown = set(server) - {"urls", "username", "credential"}
    if unknown:
        raise ConfigError(f"unknown ice server keys {sorted(unknown)}")
    if any(u.startswith(("turn:", "turns:")) for u in url_list) and not (
        server.get("username") and server.get("credential")
    ):
        raise ConfigError(f"a TURN server needs username and credential: {url_list}")


_FIELD_TYPES: dict[str, str] = {
    "host": "str",
    "port": "int",
    "data_dir": "path",
    "secret": "str?",
    "admin_key": "str?",
    "secret_file": "path?",
    "admin_key_file": "path?",
    "tls_cert": "path?",
    "tls_key": "path?",
    "ice_servers": "ice",
    "turn_urls": "strlist",
    "turn_secret": "str?",
    "turn_ttl_s": "int",
    "ice_transport_policy": "str",
    "rtc_port_min": "int?",
    "rtc_port_max": "int?",
    "rtc_interfaces": "strlist",
    "rtc_announced_address": "str?",
    "max_endpoints": "int",
    "publish_max_bitrate": "int",
    "native_send": "bool",
    "subscriber_rtx": "bool",
    "send_side_bwe": "bool",
    "simulcast": "bool",
    "video_codecs": "strlist",
    "max_previews": "int?",
    "plain_rtp_host": "str",
    "reconnect_grace_s": "float",
    "session_ttl_s": "int",
    "auto_record": "bool",
    "redis_url": "str?",
    "room_store": "str",
    "ws_max_message_bytes": "int",
    "ws_rate": "float",
    "ws_burst": "int",
    "ws_max_queued_bytes": "int",
    "rest_rate": "float",
    "rest_burst": "int",
    "trust_forwarded_for": "bool",
    "media": "bool",
    "media_backend": "str",
    "node_id": "str?",
    "advertise_url": "str?",
    "metrics_listen": "str?",
    "recording_retention_days": "int?",
    "recording_auto_render": "bool",
    "recording_fsync": "bool",
    "shutdown_timeout_s": "float",
    "live_size": "str",
    "live_fps": "int",
    "live_threads": "int",
    "live_preset": "str",
    "live_compositor": "str",
    "live_hosts": "strlist",
    "public_base_url": "str?",
    "live_requests_per_s": "float",
    "comment_posts_per_min": "float",
    "comment_posts_per_min_ip": "float",
    "like_posts_per_s": "float",
    "like_posts_per_s_ip": "float",
    "comment_blocked_words": "strlist",
    "clip_max_bytes": "int",
}
assert set(_FIELD_TYPES) == {f.name for f in fields(Settings)}


def _coerce(name: str, value: Any, source: str, from_text: bool) -> Any:
    """Turn a TOML value (typed) or an environment string into the field's type."""
    kind = _FIELD_TYPES[name]
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if optional and (value is None or (from_text and value == "")):
        return None
    try:
        if kind == "str":
            if not isinstance(value, str):
                raise TypeError("expected a string")
            return value
        if kind == "path":
            if not isinstance(value, str):
                raise TypeError("expected a path string")
            return Path(value).expanduser()
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise TypeError("expected an integer")
            return int(value)
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise TypeError("expected a number")
            return float(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise TypeError("expected true or false")
        if kind == "strlist":
            if isinstance(value, str):
                value = json.loads(value) if value.startswith("[") else [v.strip() for v in value.split(",")]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise TypeError("expected a list of strings")
            return [v for v in value if v]
        if kind == "ice":
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, list):
                raise TypeError("expected a list of {urls, username, credential}")
            for server in value:
                _check_ice_server(server)
            return [dict(server) for server in value]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} from {source}: {exc} (got {value!r})") from None
    raise AssertionError(kind)


def load_settings(
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Defaults < TOML file < CONFERENCE_* environment < ``overrides`` (command-line flags, typed)."""
    values: dict[str, Any] = {}
    if config_file is not None:
        path = Path(config_file)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        unknown = sorted(set(data) - set(_FIELD_TYPES))
        if unknown:
            raise ConfigError(f"config file {path}: unknown settings {unknown}")
        for name, value in data.items():
            values[name] = _coerce(name, value, f"config file {path}", from_text=False)
        # Relative paths in a config file are relative to the file, not to wherever serve started.
        for name in ("data_dir", "tls_cert", "tls_key", "secret_file", "admin_key_file"):
            if isinstance(values.get(name), Path) and not values[name].is_absolute():
                values[name] = path.parent / values[name]
    env = os.environ if environ is None else environ
    for name in _FIELD_TYPES:
        key = ENV_PREFIX + name.upper()
        if key in env:
            values[name] = _coerce(name, env[key], f"environment {key}", from_text=True)
    for name, value in (overrides or {}).items():
        if name not in _FIELD_TYPES:
            raise ConfigError(f"unknown setting {name!r}")
        if value is not None:
            values[name] = value
    try:
        return Settings(**values)
    except TypeError as exc:  # pragma: no cover - guarded by _coerce
        raise ConfigError(str(exc)) from None


# --- command-line flags shared by `conference serve` and `conference token` ---------------------


def add_settings_arguments(parser: argparse.ArgumentParser, *, server: bool = True) -> None:
    """The flags that locate the secret; with ``server`` also everything ``serve`` needs."""
    parser.add_argument("--config", metavar="FILE", help="TOML config file")
    parser.add_argument("--data-dir", metavar="DIR", help="state and recordings (default ./data)")
    parser.add_argument(
        "--secret",
        help="token signing secret, 32 bytes at least (visible in the process list: prefer"
        " --secret-file or CONFERENCE_SECRET; default: <data-dir>/secret, generated)",
    )
    parser.add_argument("--secret-file", metavar="FILE", help="file holding the token signing secret")
    if not server:
        return
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for the LAN)")
    parser.add_argument("--port", type=int, help="port (default 8080)")
    parser.add_argument(
        "--admin-key",
        help="key for the admin REST API, 32 bytes at least (prefer --admin-key-file or"
        " CONFERENCE_ADMIN_KEY; default: <data-dir>/admin_key, generated)",
    )
    parser.add_argument("--admin-key-file", metavar="FILE", help="file holding the admin key")
    parser.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS/WSS with this certificate")
    parser.add_argument("--tls-key", metavar="PEM", help="private key for --tls-cert")
    parser.add_argument(
        "--ice-server",
        action="append",
        metavar="URL",
        help="STUN/TURN URL handed to clients (repeatable); TURN needs --ice-username/--ice-credential",
    )
    parser.add_argument("--ice-username", help="TURN username for the --ice-server TURN URLs")
    parser.add_argument("--ice-credential", help="TURN credential for the --ice-server TURN URLs")
    parser.add_argument("--rtc-ports", metavar="MIN-MAX", help="UDP port range for the server's media")
    parser.add_argument(
        "--rtc-interface",
        action="append",
        metavar="NAME|ADDR",
        help="gather media candidates only on this interface or address (repeatable)",
    )
    parser.add_argument("--announced-address", help="public address announced for 1:1 NAT")
    parser.add_argument("--max-endpoints", type=int, help="endpoints per room (default 50)")
    parser.add_argument("--reconnect-grace", type=float, metavar="SECONDS", help="default 30")
    parser.add_argument(
        "--auto-record", action="store_true", default=None, help="record every room from its first join"
    )
    parser.add_argument("--redis-url", help="share rooms between processes through Redis")
    parser.add_argument(
        "--turn-url", action="append", metavar="URL", help="TURN server (repeatable) for per-join credentials"
    )
    parser.add_argument("--turn-secret", help="the TURN server's static-auth-secret (coturn use-auth-secret)")
    parser.add_argument(
        "--ice-transport-policy", choices=["all", "relay"], help="relay: pages use TURN relay candidates only"
    )
    parser.add_argument(
        "--node-id", help="this server's name among several (default: the host name and a random suffix)"
    )
    parser.add_argument(
        "--advertise-url",
        metavar="URL",
        help="how clients and other nodes reach this node (with --redis-url)",
    )
    parser.add_argument(
        "--metrics-listen", metavar="HOST:PORT", help="also serve /metrics here, without the admin key"
    )
    parser.add_argument(
        "--room-store",
        choices=["sqlite", "memory"],
        help="without --redis-url: sqlite (default, <data-dir>/rooms.sqlite3, survives restarts) or memory",
    )
    parser.add_argument("--no-media", action="store_true", help="signaling only, no media forwarding")
    parser.add_argument(
        "--media-backend",
        choices=MEDIA_BACKEND_NAMES,
        help="media core (default sfu; relay_baseline to compare)",
    )


def settings_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    overrides: dict[str, Any] = {
        "data_dir": Path(args.data_dir) if getattr(args, "data_dir", None) else None,
        "secret": getattr(args, "secret", None),
        "secret_file": Path(args.secret_file) if getattr(args, "secret_file", None) else None,
    }
    if hasattr(args, "host"):
        overrides.update(
            host=args.host,
            port=args.port,
            admin_key=args.admin_key,
            admin_key_file=Path(args.admin_key_file) if args.admin_key_file else None,
            tls_cert=Path(args.tls_cert) if args.tls_cert else None,
            tls_key=Path(args.tls_key) if args.tls_key else None,
            rtc_interfaces=args.rtc_interface,
            rtc_announced_address=args.announced_address,
            max_endpoints=args.max_endpoints,
            reconnect_grace_s=args.reconnect_grace,
            auto_record=args.auto_record,
            redis_url=args.redis_url,
            node_id=args.node_id,
            advertise_url=args.advertise_url,
            turn_urls=args.turn_url,
            turn_secret=args.turn_secret,
            ice_transport_policy=args.ice_transport_policy,
            metrics_listen=args.metrics_listen,
            room_store=args.room_store,
            media=False if args.no_media else None,
            media_backend=args.media_backend,
        )
        if args.ice_server:
            server: dict[str, Any] = {"urls": list(args.ice_server)}
            if args.ice_username:
                server.update(username=args.ice_username, credential=args.ice_credential)
            overrides["ice_servers"] = [server]
        if args.rtc_ports:
            low, sep, high = args.rtc_ports.partition("-")
            if not sep or not low.isdigit() or not high.isdigit():
                raise ConfigError(f"--rtc-ports must look like 40000-40100, got {args.rtc_ports!r}")
            overrides.update(rtc_port_min=int(low), rtc_port_max=int(high))
    return load_settings(getattr(args, "config", None), environ, overrides)
