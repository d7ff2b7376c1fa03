"""The console inside the real daemon: it starts after READY, sees the live state, stops with
the service; a console that cannot start is one log line and the bin goes on sorting. And its
config section."""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import urllib.error
import urllib.request

import pytest
from conftest_console import PASSWORD, SAMPLES, free_port, write_config
from test_service import RecordingNotifier

from bin_daemon.config import parse_config
from bin_daemon.errors import ConfigError
from bin_daemon.loop.service import RunOptions, Service


@pytest.fixture(autouse=True)
def _no_systemd(monkeypatch):
    for name in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "CREDENTIALS_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)


def get(port: int, path: str, password: str = PASSWORD) -> tuple[int, dict]:
    token = base64.b64encode(f"admin:{password}".encode()).decode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Basic {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_the_console_shows_the_running_daemon_and_stops_with_it(tmp_path):
    port = free_port()
    config = write_config(tmp_path, listen=f"127.0.0.1:{port}")
    seen: list[dict] = []

    def during_the_run() -> None:  # on the loop's thread, after each item's STATUS=
        if len(seen) < 2:
            seen.append(get(port, "/api/status")[1])

    service = Service(
        RunOptions(config, "fake", SAMPLES, max_items=4),
        stdout=io.StringIO(),
        notifier=RecordingNotifier(on_status=during_the_run),
    )
    assert service.run() == 0
    assert [status["items_since_start"] for status in seen] == [1, 2]
    assert seen[1]["items_today"] == 2 and len(seen[1]["last_items"]) == 2
    assert seen[1]["model"]["sha256"] == service.sorter.classifier.sha256
    assert seen[0]["state"] == "sorting an item"
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # stopped with the service: nothing listens any more


def test_wrong_password_is_refused_by_the_running_console(tmp_path):
    port = free_port()
    config = write_config(tmp_path, listen=f"127.0.0.1:{port}")
    answers: list[int] = []

    def during_the_run() -> None:
        if not answers:
            answers.append(get(port, "/api/status", password="not the password")[0])

    service = Service(
        RunOptions(config, "fake", SAMPLES, max_items=1),
        stdout=io.StringIO(),
        notifier=RecordingNotifier(on_status=during_the_run),
    )
    assert service.run() == 0
    assert answers == [401]


def test_a_console_without_a_password_is_off_and_the_bin_sorts_on(tmp_path, caplog):
    config = write_config(tmp_path, listen=f"127.0.0.1:{free_port()}")
    (tmp_path / "console_password").unlink()
    service = Service(RunOptions(config, "fake", SAMPLES, max_items=3), stdout=io.StringIO())
    with caplog.at_level(logging.ERROR):
        assert service.run() == 0
    assert service.sorter.counts.items == 3 and service.console is None
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "console_password: console password file not found" in line
    assert line.endswith("the web console is off, sorting goes on")


def test_a_port_in_use_is_one_line_and_the_bin_sorts_on(tmp_path, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, listen=f"127.0.0.1:{port}")
        service = Service(RunOptions(config, "fake", SAMPLES, max_items=2), stdout=io.StringIO())
        with caplog.at_level(logging.ERROR):
            assert service.run() == 0
    assert service.sorter.counts.items == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [
        f"console: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "the web console is off, sorting goes on"
    ]


# ------------------------------------------------------------------------------ config

BASE = "sensor: {type: ir, gpio: 17}\nbins: {landfill: {servo_gpio: 12}}\nfallback_bin: landfill\n"


def test_console_is_off_by_default_and_listen_is_split():
    assert parse_config(BASE).console.listen is None
    for listen, expected in [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("'[::1]:8080'", ("::1", 8080)),
        ("bin.local:8443", ("bin.local", 8443)),
    ]:
        config = parse_config(BASE + f"console:\n  listen: {listen}\n")
        assert config.console.host_port() == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("  listen: 8080\n", "c.yaml:5: console.listen: listen '8080': expected HOST:PORT"),
        ("  listen: 127.0.0.1:70000\n", "c.yaml:5: console.listen: listen '127.0.0.1:70000'"),
        ("  listen: 'http://x:80'\n", "c.yaml:5: console.listen: listen 'http://x:80'"),
        ("  password: hunter22\n", "c.yaml:5: console.password: a password does not belong"),
        ("  session_hours: 0\n", "c.yaml:5: console.session_hours: Input should be greater than 0"),
        ("  max_upload_mb: 500\n", "c.yaml:5: console.max_upload_mb: Input should be less than"),
        ("  listne: 1\n", "c.yaml:5: console.listne: unknown key"),
    ],
)
def test_bad_console_settings_name_file_line_and_key(text, message):
    with pytest.raises(ConfigError) as error:
        parse_config(BASE + "console:\n" + text, source="c.yaml")
    assert str(error.value).startswith(message), str(error.value)


def test_password_file_is_taken_from_the_config_folder(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(BASE + "console: {listen: '127.0.0.1:8080', password_file: pw}\n")
    from bin_daemon.config import load_config

    assert load_config(path).console_password_file() == tmp_path / "pw"


def test_the_bundled_console_section_matches_the_schema_defaults():
    from bin_daemon.config import ConsoleConfig, load_config

    assert load_config().console == ConsoleConfig()


def send(
    port: int, path: str, data: bytes | None = None, content_type: str = ""
) -> tuple[int, bytes]:
    """GET (no ``data``) or POST ``data`` as the console's admin; (status, body)."""
    token = base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def post(port: int, path: str, body: dict) -> tuple[int, dict]:
    status, answer = send(port, path, json.dumps(body).encode(), "application/json")
    return status, json.loads(answer or b"{}")


def upload(port: int, jpeg: bytes) -> tuple[int, dict]:
    """``/api/classify`` with ``jpeg`` as a multipart file, as a browser sends it."""
    boundary = "bin-daemon-test-boundary"
    body = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="image"; filename="frame.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    body += jpeg + f"\r\n--{boundary}--\r\n".encode()
    status, answer = send(port, "/api/classify", body, f"multipart/form-data; boundary={boundary}")
    return status, json.loads(answer or b"{}")


def test_a_correction_on_the_console_teaches_the_site_store_and_uploads_see_it(tmp_path):
    from bin_daemon.config import load_config
    from bin_daemon.model.preprocess import decode_image
    from bin_daemon.site.store import SiteStore

    port = free_port()
    config_path = write_config(
        tmp_path, listen=f"127.0.0.1:{port}", extra=f"site: {{path: {tmp_path / 'site.sqlite3'}}}\n"
    )
    config_path.write_text(config_path.read_text().replace("save: unsure", "save: all"))
    answers: list[tuple[int, dict]] = []
    frame: list[bytes] = []
    uploads: list[tuple[int, dict, object]] = []

    def during_the_run() -> None:  # after an item's STATUS=, on the loop's thread
        if not answers:
            review = get(port, "/api/review?show=all")[1]["items"]
            if review:
                item = review[0]["item_id"]
                answers.append(post(port, f"/api/review/{item}", {"label": "Coffee Cup"}))
                frame.append(send(port, f"/frames/{item}.jpg")[1])
        elif not uploads and service.sorter.classifier.examples:  # taught, head refitted
            # the loop's own answer for the frame (its thread: its interpreter) and the console's
            own = service.sorter.classifier.classify(decode_image(frame[0], "frame"))
            uploads.append((*upload(port, frame[0]), own))

    service = Service(
        RunOptions(config_path, "fake", SAMPLES, max_items=4),
        stdout=io.StringIO(),
        notifier=RecordingNotifier(on_status=during_the_run),
    )
    assert service.run() == 0
    assert answers and answers[0][0] == 200 and answers[0][1]["label"] == "coffee_cup"
    assert uploads, "the correction was never taught while the daemon ran"
    status, result, own = uploads[0]
    assert status == 200, result
    assert own.label == result["label"] == "coffee_cup"  # the taught frame, as the loop sorts it
    assert result["confidence"] == pytest.approx(own.confidence, abs=1e-4)
    assert result["site_examples"] == 1 and result["model_label"] == own.model_label != "coffee_cup"
    store = SiteStore(load_config(config_path).site_store_path())
    try:
        assert store.counts() == {"coffee_cup": 1}  # taught by the loop, between two items
    finally:
        store.close()
