"""The console's gate without a web server: passwords, limits, sessions, CSRF, origins."""

from __future__ import annotations

import pytest
from conftest_console import ManualClock

from bin_daemon.console.security import (
    MAX_SESSIONS,
    WINDOW_S,
    Gate,
    csrf_ok,
    read_password,
    safe_next,
    same_origin,
)
from bin_daemon.errors import ConfigError


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


def test_right_and_wrong_passwords(clock):
    gate = Gate("s3cret-password", session_s=60, clock=clock)
    assert gate.attempt("10.0.0.2", "s3cret-password").ok
    assert not gate.attempt("10.0.0.2", "s3cret-passwor").ok
    assert not gate.attempt("10.0.0.2", "").ok
    assert not gate.attempt("10.0.0.2", "s3cret-password\x00").ok


def test_wrong_passwords_are_limited_per_client_and_even_the_right_one_waits(clock):
    gate = Gate("s3cret-password", session_s=60, max_failures=3, clock=clock)
    for _ in range(3):
        verdict = gate.attempt("10.0.0.2", "guess")
        assert not verdict.ok and verdict.retry_after_s == 0
    locked = gate.attempt("10.0.0.2", "s3cret-password")
    assert not locked.ok and locked.retry_after_s == pytest.approx(WINDOW_S)
    assert gate.attempt("10.0.0.3", "s3cret-password").ok  # another client is not locked out
    clock.advance(WINDOW_S / 2)
    assert gate.attempt("10.0.0.2", "s3cret-password").retry_after_s == pytest.approx(WINDOW_S / 2)
    clock.advance(WINDOW_S / 2 + 0.01)
    assert gate.attempt("10.0.0.2", "s3cret-password").ok


def test_many_clients_guessing_together_hit_the_global_limit(clock):
    gate = Gate("s3cret-password", session_s=60, max_failures=2, clock=clock)
    for n in range(8):  # 4x the per-client limit, from different addresses
        assert not gate.attempt(f"10.0.1.{n}", "guess").ok
    assert gate.attempt("10.0.9.9", "s3cret-password").retry_after_s > 0
    clock.advance(WINDOW_S + 1)
    assert gate.attempt("10.0.9.9", "s3cret-password").ok


def test_sessions_expire_and_close(clock):
    gate = Gate("s3cret-password", session_s=3600, clock=clock)
    session = gate.open_session()
    assert gate.session(session.token) is session
    assert gate.session("not-a-token") is None and gate.session(None) is None
    clock.advance(3599)
    assert gate.session(session.token) is session
    clock.advance(2)
    assert gate.session(session.token) is None
    again = gate.open_session()
    gate.close_session(again.token)
    assert gate.session(again.token) is None


def test_session_count_is_bounded(clock):
    gate = Gate("s3cret-password", session_s=3600, clock=clock)
    first = gate.open_session()
    for _ in range(MAX_SESSIONS):
        clock.advance(1)
        gate.open_session()
    assert gate.session(first.token) is None  # the oldest went


def test_csrf_token_must_match_the_session(clock):
    session = Gate("s3cret-password", session_s=60, clock=clock).open_session()
    assert csrf_ok(session, session.csrf)
    assert not csrf_ok(session, None)
    assert not csrf_ok(session, "")
    assert not csrf_ok(session, session.csrf[:-1])
    assert session.csrf != session.token


@pytest.mark.parametrize(
    ("origin", "host", "site", "ok"),
    [
        (None, "bin.local:8080", None, True),  # curl, scripts
        ("http://bin.local:8080", "bin.local:8080", "same-origin", True),
        ("http://evil.example", "bin.local:8080", None, False),
        ("http://bin.local:8081", "bin.local:8080", None, False),
        ("null", "bin.local:8080", None, False),
        (None, "bin.local:8080", "cross-site", False),
        (None, "bin.local:8080", "same-site", False),
        ("http://bin.local:8080", None, None, False),
    ],
)
def test_same_origin(origin, host, site, ok):
    assert same_origin(origin, host, site) is ok


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/review?show=all", "/review?show=all"),
        ("//evil.example/x", "/"),
        ("https://evil.example", "/"),
        ("/\\evil.example", "/"),
        ("", "/"),
        (None, "/"),
    ],
)
def test_safe_next_stays_on_this_site(target, expected):
    assert safe_next(target) == expected


def test_password_from_a_file_or_the_systemd_credential(tmp_path):
    (tmp_path / "pw").write_text("first-line-pass\nsecond line\n")
    assert read_password(tmp_path / "pw", None) == "first-line-pass"
    (tmp_path / "console_password").write_text("credential-pass")
    assert read_password(None, str(tmp_path)) == "credential-pass"


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "console password file not found"), ("short\n", "at least 8 characters")],
)
def test_a_missing_or_weak_password_is_one_clear_line(tmp_path, content, message):
    path = tmp_path / "pw"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=message) as error:
        read_password(path, None)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_no_password_configured_names_both_ways(tmp_path):
    with pytest.raises(ConfigError, match=r"console\.password_file.*LoadCredential"):
        read_password(None, None)
