"""Tokens: mint and verify, every way a token can be wrong, the secret files, `conference token`."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import jwt
import pytest

from conference.config import Settings
from conference.roles import Role
from signaling.tokens import (
    TokenError,
    check_room,
    mint_token,
    resolve_admin_key,
    resolve_secret,
    verify_token,
)

SECRET = "a-secret-that-is-long-enough-for-hs256!"
ROOT = Path(__file__).resolve().parents[1]


def test_round_trip_carries_every_claim() -> None:
    token = mint_token(SECRET, "council", "hall-a", "Hall A", "venue", ttl=120, admin=False)
    claims = verify_token(SECRET, token)
    assert (claims.room, claims.identity, claims.name, claims.role, claims.admin) == (
        "council",
        "hall-a",
        "Hall A",
        Role.VENUE,
        False,
    )
    assert claims.expires_at - claims.issued_at == 120
    assert abs(claims.issued_at - time.time()) < 5
    assert verify_token(SECRET, mint_token(SECRET, "r", "c", "Clerk", "clerk", admin=True)).admin is True


@pytest.mark.parametrize(
    ("make", "status", "reason"),
    [
        (lambda: None, 401, "missing token"),
        (lambda: "", 401, "missing token"),
        (lambda: "abc.def", 401, "malformed token"),
        (
            lambda: mint_token("another-secret-that-is-long-enough!!", "r", "i", "N", "chair"),
            401,
            "invalid signature",
        ),
        (
            lambda: mint_token(SECRET, "r", "i", "N", "chair", ttl=10, now=int(time.time()) - 60),
            401,
            "token expired",
        ),
        (
            lambda: jwt.encode({"room": "r", "sub": "i", "role": "chair", "iat": 1}, SECRET),
            401,
            "missing exp",
        ),
        (
            lambda: jwt.encode({"sub": "i", "role": "chair", "iat": 1, "exp": 2**31}, SECRET),
            401,
            "missing room",
        ),
        (
            lambda: jwt.encode({"room": "r", "sub": "i", "role": "king", "iat": 1, "exp": 2**31}, SECRET),
            401,
            "invalid claims",
        ),
        (
            lambda: jwt.encode({"room": "../x", "sub": "i", "role": "chair", "iat": 1, "exp": 2**31}, SECRET),
            401,
            "invalid claims",
        ),
        (
            # Algorithm confusion: an unsigned token must never pass.
            lambda: jwt.encode(
                {"room": "r", "sub": "i", "role": "chair", "iat": 1, "exp": 2**31}, None, "none"
            ),
            401,
            "",
        ),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(make, status, reason) -> None:
    with pytest.raises(TokenError) as info:
        verify_token(SECRET, make())
    assert info.value.status == status
    assert reason in info.value.reason
    assert info.value.close_code == 4401


def test_wrong_room_is_403() -> None:
    claims = verify_token(SECRET, mint_token(SECRET, "council", "i", "N", "venue"))
    check_room(claims, "council")
    with pytest.raises(TokenError) as info:
        check_room(claims, "budget")
    assert (info.value.status, info.value.close_code) == (403, 4403)


@pytest.mark.parametrize(
    ("field", "value"),
    [("room", "has space"), ("room", ""), ("identity", "x" * 65), ("role", "king"), ("name", ""), ("ttl", 0)],
)
def test_mint_refuses_bad_arguments(field, value) -> None:
    args = {"room": "r", "identity": "i", "name": "N", "role": "venue", "ttl": 60} | {field: value}
    with pytest.raises(ValueError, match=field if field != "identity" else "identity"):
        mint_token(SECRET, **args)


def test_secret_and_admin_key_files_are_generated_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    secret = resolve_secret(settings)
    admin = resolve_admin_key(settings)
    assert len(secret) >= 40 and len(admin) >= 40 and secret != admin
    assert resolve_secret(settings) == secret  # read back, not regenerated
    mode = stat.S_IMODE(os.stat(tmp_path / "data" / "secret").st_mode)
    assert mode == 0o600
    assert (
        resolve_secret(Settings(data_dir=tmp_path / "data", secret="explicit-secret-of-at-least-32-bytes"))
        == "explicit-secret-of-at-least-32-bytes"
    )


def test_token_command_uses_the_same_secret_as_the_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "signaling", "token", "--data-dir", str(data)]
    out = subprocess.run(
        [
            *cmd,
            "--room",
            "council",
            "--role",
            "chair",
            "--identity",
            "chair",
            "--name",
            "The Chair",
            "--ttl",
            "60",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    token = out.stdout.strip()
    claims = verify_token(resolve_secret(Settings(data_dir=data)), token)
    assert (claims.room, claims.role, claims.name) == ("council", "chair", "The Chair")
    bad = subprocess.run(
        [*cmd, "--room", "bad room", "--role", "chair", "--identity", "c", "--name", "C"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert bad.returncode == 2 and "room must be" in bad.stderr and bad.stdout == ""
    url = subprocess.run(
        [
            *cmd,
            "--secret",
            SECRET,
            "--room",
            "r",
            "--role",
            "member",
            "--identity",
            "m",
            "--name",
            "M",
            "--url",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    assert url.stdout.startswith("http://127.0.0.1:8080/phone?token=")
    verify_token(SECRET, url.stdout.strip().split("token=")[1])
    # The link follows the server's settings (here its port from the environment, as serve reads
    # it), and --base-url names the address behind a proxy.
    args = [
        *cmd,
        "--secret",
        SECRET,
        "--room",
        "r",
        "--role",
        "venue",
        "--identity",
        "v",
        "--name",
        "V",
        "--url",
    ]
    env = {**os.environ, "CONFERENCE_PORT": "9443", "CONFERENCE_HOST": "0.0.0.0"}
    moved = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=60, check=True, env=env)
    assert moved.stdout.startswith("http://127.0.0.1:9443/venue?token="), moved.stdout
    proxied = subprocess.run(
        [*args, "--base-url", "https://meet.example.org/"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert proxied.returncode == 0 and proxied.stdout.startswith("https://meet.example.org/venue?token=")
    bad_base = subprocess.run(
        [*args, "--base-url", "meet.example.org"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert bad_base.returncode == 2 and "--base-url" in bad_base.stderr
