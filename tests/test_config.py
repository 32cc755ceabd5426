"""Settings: defaults < TOML file < CONFERENCE_* environment < flags, and clear errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from conference.config import ConfigError, Settings, add_settings_arguments, load_settings, settings_from_args


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser, server=True)
    return parser.parse_args(argv)


def test_defaults_are_safe() -> None:
    s = Settings()
    assert (s.host, s.port, s.max_endpoints, s.ice_servers, s.media) == ("127.0.0.1", 8080, 50, [], True)
    assert s.redis_url is None and s.secret is None and not s.tls
    assert (s.ws_max_message_bytes, s.ws_rate, s.ws_burst) == (262144, 20.0, 40)


def test_precedence_file_env_flags(tmp_path: Path) -> None:
    config = tmp_path / "conference.toml"
    config.write_text(
        """
port = 9000
host = "0.0.0.0"
max_endpoints = 30
data_dir = "state"
rtc_port_min = 40000
rtc_port_max = 40100

[[ice_servers]]
urls = ["turn:turn.example.org:3478"]
username = "u"
credential = "p"
"""
    )
    env = {
        "CONFERENCE_PORT": "9100",
        "CONFERENCE_AUTO_RECORD": "true",
        "CONFERENCE_RTC_INTERFACES": "eth0,10.0.0.5",
    }
    from_file = load_settings(config, {})
    assert (from_file.port, from_file.host, from_file.max_endpoints) == (9000, "0.0.0.0", 30)
    assert from_file.data_dir == tmp_path / "state"  # relative to the config file
    assert from_file.ice_servers[0]["username"] == "u"
    assert (from_file.rtc_port_min, from_file.rtc_port_max) == (40000, 40100)
    with_env = load_settings(config, env)
    assert (with_env.port, with_env.auto_record, with_env.rtc_interfaces) == (
        9100,
        True,
        ["eth0", "10.0.0.5"],
    )
    args = parse(["--config", str(config), "--port", "9200", "--no-media", "--rtc-ports", "41000-41010"])
    flags = settings_from_args(args, env)
    assert (flags.port, flags.media, flags.max_endpoints, flags.auto_record) == (9200, False, 30, True)
    assert (flags.rtc_port_min, flags.rtc_port_max) == (41000, 41010)


def test_video_codecs_from_the_environment_keep_their_order(tmp_path: Path) -> None:
    assert load_settings(None, {}).video_codecs == ["vp8", "h264"]
    assert load_settings(None, {"CONFERENCE_VIDEO_CODECS": "H264,vp8"}).video_codecs == ["H264", "vp8"]


def test_ice_server_flags() -> None:
    args = parse(["--ice-server", "turn:t.example:3478", "--ice-username", "u", "--ice-credential", "p"])
    assert settings_from_args(args, {}).ice_servers == [
        {"urls": ["turn:t.example:3478"], "username": "u", "credential": "p"}
    ]


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("port = 'x'", {}, "port"),
        ("colour = 'red'", {}, "unknown settings ['colour']"),
        ("port = 70000", {}, "port must be"),
        ("tls_cert = 'a.pem'", {}, "tls_cert and tls_key"),
        ("rtc_port_min = 5000", {}, "rtc_port_min and rtc_port_max"),
        ("rtc_port_min = 6000\nrtc_port_max = 5000", {}, "rtc port range"),
        ("[[ice_servers]]\nurls = ['turn:x']", {}, "TURN server needs username"),
        ("[[ice_servers]]\nurls = ['http://x']", {}, "must start with stun"),
        ("not toml at all [", {}, "not valid TOML"),
        ("", {"CONFERENCE_MAX_ENDPOINTS": "many"}, "CONFERENCE_MAX_ENDPOINTS"),
        ("", {"CONFERENCE_AUTO_RECORD": "perhaps"}, "true or false"),
        ("", {"CONFERENCE_ICE_SERVERS": '[{"urls": 5}]'}, "urls"),
        ("room_store = 'postgres'", {}, "room_store must be sqlite or memory"),
        ("video_codecs = ['vp9']", {}, "video_codecs must name vp8 and/or h264"),
        ("video_codecs = []", {}, "video_codecs must name"),
        ("", {"CONFERENCE_VIDEO_CODECS": "vp8,vp8"}, "once each"),
    ],
)
def test_bad_settings_say_what_is_wrong(tmp_path: Path, toml: str, env: dict[str, str], message: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_settings(config, env)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "nope.toml", {})


def test_bad_flag_value() -> None:
    with pytest.raises(ConfigError, match="--rtc-ports"):
        settings_from_args(parse(["--rtc-ports", "lots"]), {})
