"""The console's HTTP API and pages with FastAPI's test client, on a real run's records and the
real model: status, review, corrections (event log and hook), classify an upload, every bad
input, and the gate (password, limits, sessions, CSRF)."""

from __future__ import annotations

import base64
import csv
import io
import re
import sqlite3
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest_console import PASSWORD, SAMPLES, Daemon, ManualClock, sort_samples
from conftest_models import TINY, make_model_dir
from fastapi.testclient import TestClient

from bin_daemon.config import load_config
from bin_daemon.console.app import COOKIE, Settings, create_app
from bin_daemon.console.security import WINDOW_S, Gate
from bin_daemon.console.state import Console, Hooks
from bin_daemon.console.upload import PNG_SIGNATURE
from bin_daemon.loop.service import load_classifier, make_policy, make_spool
from bin_daemon.model import preprocess
from bin_daemon.records import eventlog

BASIC = ("anyone", PASSWORD)
SAMPLE = SAMPLES / "glass" / "glass1.jpg"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """The daemon sorted the 24 samples once (real model, fake hardware); tests copy it."""
    folder = tmp_path_factory.mktemp("sorted")
    sort_samples(folder)
    return folder


@pytest.fixture
def world(run_dir, tmp_path):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(run_dir, folder)
    config = load_config(folder / "config.yaml")
    classifier = load_classifier(config)
    daemon = Daemon(
        classifier=classifier,
        policy=make_policy(config, classifier),
        spool=make_spool(config),
        model_dir=classifier.model_path.parent,
        faults={},
    )
    return folder, config, daemon


class Harness:
    def __init__(self, world, settings: Settings | None = None, **console_options):
        self.folder, self.config, self.daemon = world
        self.corrections: list[tuple[str, str, Path | None]] = []
        self.fill = {"recycling": 42.5, "glass": None}
        self.site_store = self.folder / "site.sqlite3"
        hooks = Hooks(
            on_correction=lambda *args: self.corrections.append(args),
            extra_labels=lambda: ["tetra pak"],
            fill_levels=lambda: self.fill,
            site_store=self.site_store,
        )
        self.console = Console(
            self.daemon.view,
            event_log_path=self.config.event_log_path(),
            hooks=hooks,
            **console_options,
        )
        self.clock = ManualClock()
        self.gate = Gate(PASSWORD, session_s=3600, max_failures=3, clock=self.clock)
        self.settings = settings or Settings(max_requests_per_s=1000)
        app = create_app(self.console, self.gate, self.settings, clock=self.clock)
        self.client = TestClient(app, follow_redirects=False)

    def records(self) -> list[dict]:
        return list(eventlog.read_events(self.config.event_log_path()))

    def login(self) -> str:
        """Log in with the form; the session's CSRF token."""
        done = self.client.post("/login", data={"password": PASSWORD, "next": "/"})
        assert done.status_code == 303, done.text
        page = self.client.get("/")
        return re.search(r'data-csrf="([^"]+)"', page.text).group(1)


@pytest.fixture
def app(world):
    harness = Harness(world)
    yield harness
    harness.console.close()


def stored_files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def event_rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT * FROM events ORDER BY id").fetchall()


# ------------------------------------------------------------------------------ the gate


def test_everything_but_login_and_static_needs_the_password(app):
    client = app.client
    for path in ("/api/status", "/api/events", "/api/review", "/frames/x.jpg", "/partials/status",
                 "/api/taught", "/taught-frames/1.jpg"):  # fmt: skip
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"] == 'Basic realm="bin-daemon"'
    assert client.post("/api/review/x", json={"label": "glass"}).status_code == 401
    assert client.post("/api/taught/1/remove").status_code == 401
    assert client.get("/taught").headers["location"] == "/login?next=/taught"
    page = client.get("/review?show=all")
    assert (
        page.status_code == 303 and page.headers["location"] == "/login?next=/review%3Fshow%3Dall"
    )
    assert client.get("/login").status_code == 200
    assert client.get("/static/console.css").status_code == 200
    assert client.get("/api/status", auth=("x", "wrong password")).status_code == 401


def test_requests_beyond_the_budget_wait_their_turn(world):
    harness = Harness(world, Settings(max_requests_per_s=2, queue_s=2.0))  # bursts of 6
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # time passes only here
        slept.append(seconds)
        harness.clock.advance(seconds)

    app = create_app(
        harness.console, harness.gate, harness.settings, clock=harness.clock, sleep=sleep
    )
    client = TestClient(app)
    try:
        assert [client.get("/api/status", auth=BASIC).status_code for _ in range(8)] == [200] * 8
        assert slept == pytest.approx([0.5, 0.5])  # the 7th and 8th waited for a token
    finally:
        harness.console.close()


def test_requests_beyond_the_budget_are_429_and_files_are_not_counted(world):
    harness = Harness(world, Settings(max_requests_per_s=2, queue_s=0))  # bursts of 6
    try:
        client = harness.client
        answers = [client.get("/api/status", auth=BASIC).status_code for _ in range(7)]
        assert answers == [200] * 6 + [429]
        refused = client.get("/api/status", auth=BASIC)
        assert refused.headers["retry-after"] == "1" and "slow down" in refused.json()["detail"]
        assert client.get("/static/console.js").status_code == 200  # not metered
        harness.clock.advance(0.5)  # one more request's worth
        assert client.get("/api/status", auth=BASIC).status_code == 200
        assert client.get("/api/status", auth=BASIC).status_code == 429
    finally:
        harness.console.close()


def test_status_snapshots_are_shared_within_the_cache_time(world):
    _folder, config, daemon = world
    clock = ManualClock()
    console = Console(
        daemon.view,
        event_log_path=config.event_log_path(),
        status_cache_s=0.5,
        monotonic=clock,
    )
    try:
        first = console.status()
        clock.advance(0.4)
        assert console.status() is first  # nothing happened within 0.5 s: the same snapshot
        daemon.faults["camera"] = "camera: no frame within 2 s"
        assert console.status().degraded == {"camera": "camera: no frame within 2 s"}  # at once
        second = console.status()
        clock.advance(0.5)
        assert console.status() is not second  # and at least every 0.5 s
    finally:
        console.close()


def test_basic_auth_and_security_headers(app):
    response = app.client.get("/api/status", auth=BASIC)
    assert response.status_code == 200
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"


def test_wrong_passwords_are_rate_limited_with_the_injected_clock(app):
    client = app.client
    for _ in range(3):
        assert client.get("/api/status", auth=("x", "guess")).status_code == 401
    locked = client.get("/api/status", auth=BASIC)  # even the right one waits
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) == WINDOW_S + 1
    form = client.post("/login", data={"password": PASSWORD})
    assert form.status_code == 429 and "Too many wrong passwords" in form.text
    app.clock.advance(WINDOW_S + 1)
    assert client.get("/api/status", auth=BASIC).status_code == 200


def test_login_form_sets_a_strict_http_only_cookie_that_expires(app):
    client = app.client
    wrong = client.post("/login", data={"password": "nope", "next": "/events"})
    assert wrong.status_code == 401 and "Wrong password" in wrong.text
    done = client.post("/login", data={"password": PASSWORD, "next": "//evil.example/"})
    assert done.status_code == 303 and done.headers["location"] == "/"
    cookie = done.headers["set-cookie"]
    assert f"{COOKIE}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/").status_code == 200
    app.clock.advance(3601)
    assert client.get("/").status_code == 303  # back to the login page
    assert client.get("/api/status").status_code == 401


def test_logout_ends_the_session(app):
    csrf = app.login()
    assert app.client.post("/logout", data={"csrf_token": csrf}).status_code == 303
    assert app.client.get("/").status_code == 303


def test_state_changes_by_cookie_need_the_csrf_token_and_cross_site_is_refused(app):
    csrf = app.login()
    item = app.client.get("/api/review").json()["items"][0]["item_id"]
    url = f"/api/review/{item}"
    assert app.client.post(url, json={"label": "glass"}).status_code == 403
    wrong = app.client.post(url, json={"label": "glass"}, headers={"X-CSRF-Token": "x" + csrf})
    assert wrong.status_code == 403
    evil = {"X-CSRF-Token": csrf, "Origin": "http://evil.example"}
    assert app.client.post(url, json={"label": "glass"}, headers=evil).status_code == 403
    cross = {"X-CSRF-Token": csrf, "Sec-Fetch-Site": "cross-site"}
    assert app.client.post(url, json={"label": "glass"}, headers=cross).status_code == 403
    assert all(r.get("corrected_label") is None for r in app.records())  # nothing written
    ok = {"X-CSRF-Token": csrf, "Origin": "http://testserver"}
    assert app.client.post(url, json={"label": "glass"}, headers=ok).status_code == 200
    example = teach_three(app.site_store)[0]  # removing a site example: the same rules
    remove = f"/api/taught/{example}/remove"
    for headers in ({}, {"X-CSRF-Token": "x" + csrf}, evil, cross):
        assert app.client.post(remove, headers=headers).status_code == 403
    assert app.client.get("/api/taught").json()["total"] == 3  # nothing removed
    assert app.client.post(remove, headers=ok).status_code == 200


def test_basic_auth_from_another_site_is_refused_too(app):
    item = app.client.get("/api/review", auth=BASIC).json()["items"][0]["item_id"]
    response = app.client.post(
        f"/api/review/{item}",
        json={"label": "glass"},
        auth=BASIC,
        headers={"Origin": "http://evil.example"},
    )
    assert response.status_code == 403


# ------------------------------------------------------------------------------ status


def test_status_shows_the_live_state(app):
    status = app.client.get("/api/status", auth=BASIC).json()
    records = app.records()
    assert len(records) == 24
    per_bin = {b["name"]: b for b in status["bins"]}
    for name in ("recycling", "glass", "landfill"):
        assert per_bin[name]["count_today"] == sum(1 for r in records if r["bin"] == name)
    assert status["items_today"] == 24
    assert status["unsure_today"] == sum(1 for r in records if r["unsure"]) > 0
    assert per_bin["recycling"]["fill_percent"] == 42.5
    assert per_bin["glass"]["fill_percent"] is None and per_bin["landfill"]["fill_percent"] is None
    assert status["model"]["sha256"] == app.daemon.classifier.sha256
    assert status["model"]["version"] == app.daemon.classifier.version
    assert status["uptime_s"] == 3725.0 and status["degraded"] == {}
    assert status["telemetry"] == {"configured": False, "connected": None}
    newest = [r["item_id"] for r in reversed(records)][:12]
    assert [item["item_id"] for item in status["last_items"]] == newest
    unsure = next(item for item in status["last_items"] if item["unsure"])
    assert unsure["frame_url"] == f"/frames/{unsure['item_id']}.jpg"  # spool.save: unsure


def test_status_shows_degraded_devices_and_no_fill_sensor(app):
    app.daemon.faults["camera"] = "camera: no frame within 2 s"
    app.console.hooks.fill_levels = None
    status = app.client.get("/api/status", auth=BASIC).json()
    assert status["degraded"] == {"camera": "camera: no frame within 2 s"}
    assert all(b["fill_percent"] is None for b in status["bins"])
    page = app.client.get("/partials/status", auth=BASIC)
    assert "Degraded" in page.text and "camera: no frame within 2 s" in page.text


def test_status_names_the_prior_shift_in_force(app):
    assert app.client.get("/api/status", auth=BASIC).json()["model"]["class_bias"] == {}
    assert 'id="class-bias"' not in app.client.get("/partials/status", auth=BASIC).text
    app.daemon.class_bias = {"trash": 1.0}
    assert app.client.get("/api/status", auth=BASIC).json()["model"]["class_bias"] == {"trash": 1.0}
    assert "prior shift: trash +1" in app.client.get("/partials/status", auth=BASIC).text


@pytest.mark.parametrize(
    ("telemetry", "shown"),
    [((False, None), "not set up"), ((True, True), "connected"), ((True, False), "offline")],
)
def test_status_says_whether_the_fleet_link_is_up(app, telemetry, shown):
    app.daemon.telemetry = telemetry
    status = app.client.get("/api/status", auth=BASIC).json()
    assert status["telemetry"] == {"configured": telemetry[0], "connected": telemetry[1]}
    assert shown in app.client.get("/partials/status", auth=BASIC).text


def test_status_page_renders_bins_and_items(app):
    app.login()
    page = app.client.get("/")
    assert page.status_code == 200
    assert 'data-live="/partials/status"' in page.text
    for name in ("recycling", "glass", "landfill"):
        assert f'data-bin="{name}"' in page.text
    assert page.text.count("<tr data-item=") == 12
    assert "42% full" in page.text or "43% full" in page.text


# ------------------------------------------------------------------------------ review


def test_review_lists_unsure_and_spooled_items_newest_first(app):
    review = app.client.get("/api/review", auth=BASIC).json()
    unsure = [r["item_id"] for r in reversed(app.records()) if r["unsure"]]
    assert [item["item_id"] for item in review["items"]] == unsure
    assert all(item["frame_url"] for item in review["items"])
    assert review["labels"][:6] == list(app.daemon.classifier.labels)
    assert "tetra pak" in review["labels"] and review["to_review"] == len(unsure)


def test_review_also_lists_spooled_frames_of_sure_items(app):
    """With spool.save: all, frames of items the model was sure about are reviewable too."""
    sure = next(r for r in reversed(app.records()) if not r["unsure"])
    frame = app.daemon.spool.directory / f"{sure['item_id']}.jpg"
    frame.write_bytes(SAMPLE.read_bytes())
    (app.daemon.spool.directory / "not-an-item.jpg").write_bytes(b"ignored")
    items = app.client.get("/api/review", auth=BASIC).json()["items"]
    listed = next(item for item in items if item["item_id"] == sure["item_id"])
    assert listed["unsure"] is False and listed["frame_url"]
    assert [i["ts"] for i in items] == sorted((i["ts"] for i in items), reverse=True)
    assert all(i["item_id"] != "not-an-item" for i in items)


def test_frames_are_served_from_the_spool_only(app):
    item = app.client.get("/api/review", auth=BASIC).json()["items"][0]
    frame = app.client.get(item["frame_url"], auth=BASIC)
    assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
    assert frame.content == app.daemon.spool.frame_path(item["item_id"]).read_bytes()
    for bad in (
        "/frames/..%2F..%2Fconfig.yaml",
        "/frames/..%2Fevents.sqlite3",
        f"/frames/{item['item_id']}.json",
        "/frames/20261202T000000000Z-abc-0001.jpg",  # well-formed, not in the spool
        "/frames/%2Fetc%2Fpasswd",
    ):
        assert app.client.get(bad, auth=BASIC).status_code == 404, bad
    assert app.client.get("/static/..%2Fapp.py").status_code == 404


def test_a_correction_keeps_both_labels_and_reaches_the_hook(app):
    item = app.client.get("/api/review", auth=BASIC).json()["items"][0]
    other = next(label for label in app.daemon.classifier.labels if label != item["label"])
    response = app.client.post(
        f"/api/review/{item['item_id']}", json={"label": other.upper() + " "}, auth=BASIC
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["label"] == other and result["model_label"] == item["label"]
    record = next(r for r in app.records() if r["item_id"] == item["item_id"])
    assert record["label"] == item["label"] and record["corrected_label"] == other
    assert record["corrected_at"] == result["corrected_at"]
    assert app.corrections == [
        (item["item_id"], other, app.daemon.spool.frame_path(item["item_id"]))
    ]
    assert app.corrections[0][2].is_file()
    # the events command shows both
    assert f"corrected: {other}" in eventlog.table_line(record)
    todo = app.client.get("/api/review?show=todo", auth=BASIC).json()
    assert item["item_id"] not in [i["item_id"] for i in todo["items"]]


def test_a_new_typed_label_is_kept_and_offered_next_time(app):
    item = app.client.get("/api/review", auth=BASIC).json()["items"][-1]
    response = app.client.post(
        f"/api/review/{item['item_id']}", json={"label": "  Coffee   Cup "}, auth=BASIC
    )
    assert response.status_code == 200 and response.json()["label"] == "coffee_cup"
    assert "coffee_cup" in app.client.get("/api/review", auth=BASIC).json()["labels"]


def test_a_failing_hook_keeps_the_correction_and_says_so(app):
    def broken(*_args):
        raise RuntimeError("site store is read-only")

    app.console.hooks.on_correction = broken
    item = app.client.get("/api/review", auth=BASIC).json()["items"][0]
    response = app.client.post(
        f"/api/review/{item['item_id']}", json={"label": "glass"}, auth=BASIC
    )
    assert response.status_code == 200
    assert "site store is read-only" in response.json()["note"]
    assert next(r for r in app.records() if r["item_id"] == item["item_id"])["corrected_label"]


@pytest.mark.parametrize(
    ("item_id", "body", "status", "message"),
    [
        ("20261202T000000000Z-abc-0001", {"label": "glass"}, 404, "no item"),
        ("..%2F..%2Fetc", {"label": "glass"}, 404, "Not Found"),  # no route at all
        ("not-an-id", {"label": "glass"}, 404, "not an item id"),
        (None, {"label": "../../etc/passwd"}, 422, "letters, digits"),
        (None, {"label": ""}, 422, "letters, digits"),
        (None, {"label": "x" * 41}, 422, "1-40"),
        (None, {"label": "<script>"}, 422, "letters, digits"),
        (None, {"label": 7}, 422, "string"),
        (None, {}, 422, "Field required"),
    ],
)
def test_bad_corrections_are_refused_and_write_nothing(app, item_id, body, status, message):
    item_id = item_id or app.client.get("/api/review", auth=BASIC).json()["items"][0]["item_id"]
    before = event_rows(app.config.event_log_path())
    response = app.client.post(f"/api/review/{item_id}", json=body, auth=BASIC)
    assert response.status_code == status
    assert message in str(response.json()["detail"])
    assert event_rows(app.config.event_log_path()) == before
    assert app.corrections == []


def test_review_page_offers_every_label_and_a_text_field(app):
    app.login()
    page = app.client.get("/review?show=all")
    assert page.status_code == 200
    waiting = app.client.get("/api/review?show=todo").json()["to_review"]
    assert f'<span class="badge" id="to-review">{waiting}</span>' in page.text  # in the nav
    assert page.text.count('class="card review-card') == len(
        app.client.get("/api/review").json()["items"]
    )
    for label in [*app.daemon.classifier.labels, "tetra pak"]:
        assert f'data-label="{label}"' in page.text
    assert 'form class="new-label"' in page.text


# ------------------------------------------------------------------------------ classify


def upload(client, data: bytes, name: str = "photo.jpg", **kwargs):
    return client.post("/api/classify", files={"image": (name, data, "image/jpeg")}, **kwargs)


def test_classify_an_upload_like_the_daemon_would(app):
    before = stored_files(app.folder)
    response = upload(app.client, SAMPLE.read_bytes(), auth=BASIC)
    assert response.status_code == 200, response.text
    result = response.json()
    expected = app.daemon.classifier.classify(preprocess.load_image(SAMPLE))
    assert result["label"] == expected.label
    assert result["confidence"] == pytest.approx(expected.confidence, abs=1e-4)
    assert [s["label"] for s in result["top"]] == [label for label, _ in expected.top]
    choice = app.daemon.policy.decide(expected.label, expected.confidence)
    assert (result["bin"], result["unsure"]) == (choice.bin, choice.unsure)
    assert result["model_sha256"] == app.daemon.classifier.sha256
    assert stored_files(app.folder) == before  # no record, no frame, no lid


def test_classify_form_renders_the_result(app):
    csrf = app.login()
    page = app.client.post(
        "/classify",
        data={"csrf_token": csrf},
        files={"image": ("glass1.jpg", SAMPLE.read_bytes(), "image/jpeg")},
    )
    assert page.status_code == 200 and 'id="result"' in page.text
    assert "data:image/jpeg;base64," in page.text and "It would go to" in page.text
    stale = app.client.post(
        "/classify",
        data={"csrf_token": "stale"},
        files={"image": ("glass1.jpg", SAMPLE.read_bytes(), "image/jpeg")},
    )
    assert stale.status_code == 403 and "The form expired" in stale.text
    text = app.client.post(
        "/classify",
        data={"csrf_token": csrf},
        files={"image": ("notes.txt", b"not a photo", "text/plain")},
    )
    assert text.status_code == 415 and 'id="classify-error"' in text.text
    assert "not a JPEG or PNG image" in text.text and 'name="image"' in text.text  # the form again


def test_the_upload_model_follows_the_daemons_model(app, tmp_path):
    first = upload(app.client, SAMPLE.read_bytes(), auth=BASIC).json()
    tiny = make_model_dir(tmp_path, TINY)
    from bin_daemon.model.classifier import Classifier

    app.daemon.classifier = Classifier.load(tiny)
    app.daemon.model_dir = tiny
    second = upload(app.client, SAMPLE.read_bytes(), auth=BASIC).json()
    assert first["model_sha256"] != second["model_sha256"] == app.daemon.classifier.sha256


def test_an_upload_is_classified_with_the_daemons_prior_shift(app):
    metal = SAMPLES / "metal" / "metal129.jpg"  # metal 0.88: a runner-up with a share
    plain = upload(app.client, metal.read_bytes(), auth=BASIC).json()
    (first, p1), (second, p2) = [(s["label"], s["score"]) for s in plain["top"][:2]]
    app.daemon.class_bias = {second: float(np.log(p1 / p2)) + 0.05}
    shifted = upload(app.client, metal.read_bytes(), auth=BASIC).json()
    assert (plain["label"], shifted["label"]) == (first, second)
    choice = app.daemon.policy.decide(second, shifted["confidence"])
    assert (shifted["bin"], shifted["unsure"]) == (choice.bin, choice.unsure)
    app.daemon.class_bias = {}
    assert upload(app.client, metal.read_bytes(), auth=BASIC).json()["label"] == first


def test_an_upload_gets_the_site_head_the_daemon_sorts_with(app):
    from bin_daemon.site.head import SiteHead

    classifier = app.daemon.classifier
    own = classifier.classify(preprocess.load_image(SAMPLE))
    metal = SAMPLES / "metal" / "metal129.jpg"
    metal_own = classifier.classify(preprocess.load_image(metal))
    app.daemon.site_head = SiteHead.fit(  # the glass photo taught as a site label
        own.embedding[None],
        ["coffee_cup"],
        model_labels=classifier.labels,
        model_path=classifier.model_path,
    )
    app.daemon.site_examples = 1
    assert app.client.get("/api/status", auth=BASIC).json()["model"]["site_examples"] == 1
    taught = upload(app.client, SAMPLE.read_bytes(), auth=BASIC).json()
    assert (taught["label"], taught["model_label"], taught["site_examples"]) == (
        "coffee_cup",
        own.label,
        1,
    )
    choice = app.daemon.policy.decide("coffee_cup", taught["confidence"])
    assert (taught["bin"], taught["unsure"]) == (choice.bin, choice.unsure)
    other = upload(app.client, metal.read_bytes(), auth=BASIC).json()
    assert (other["label"], other["model_label"], other["site_examples"]) == (
        metal_own.label,
        None,
        1,
    )
    head = app.daemon.site_head
    app.daemon.site_head, app.daemon.site_examples = None, 0  # the store emptied: the model alone
    plain = upload(app.client, SAMPLE.read_bytes(), auth=BASIC).json()
    assert (plain["label"], plain["model_label"], plain["site_examples"]) == (own.label, None, 0)
    assert app.client.get("/api/status", auth=BASIC).json()["model"]["site_examples"] == 0
    app.daemon.site_head, app.daemon.site_examples = head, 1  # the page, logged in
    page = app.client.post(
        "/classify",
        data={"csrf_token": app.login()},
        files={"image": ("glass1.jpg", SAMPLE.read_bytes(), "image/jpeg")},
    )
    assert 'id="site-changed"' in page.text and f"<strong>{own.label}</strong>" in page.text
    assert "with the site head (1 example)" in page.text
    assert 'id="no-bin"' in page.text and "is in no bin" in page.text  # coffee_cup: no bin


# ------------------------------------------------------------------------------ taught


def teach_three(path: Path) -> list[int]:
    """Two frames taught as coffee_cup (no bin), one as paper; their ids, oldest first."""
    from bin_daemon.site.store import SiteStore

    taught = [("coffee_cup", SAMPLE), ("coffee_cup", SAMPLES / "glass" / "glass11.jpg"),
              ("paper", SAMPLES / "paper" / "paper1.jpg")]  # fmt: skip
    with SiteStore(path) as store:
        return [
            store.add(
                label=label,
                jpeg=photo.read_bytes(),
                embedding=np.ones(8),
                model_sha256="ab" * 32,
                source=f"item:item-{n}",
                item_id=f"item-{n}",
            )
            for n, (label, photo) in enumerate(taught)
        ]


def test_the_taught_page_lists_the_site_store_and_removes_an_example(app):
    from bin_daemon.site.store import SiteStore

    ids = teach_three(app.site_store)
    taught = app.client.get("/api/taught", auth=BASIC).json()
    assert taught["enabled"] and taught["total"] == 3
    assert [(x["label"], x["count"], x["bin"], x["new"]) for x in taught["labels"]] == [
        ("coffee_cup", 2, None, True),  # in no bin: its items go to the fallback bin
        ("paper", 1, "recycling", False),
    ]
    assert [x["id"] for x in taught["examples"]] == ids[::-1]  # newest first
    assert [
        x["id"] for x in app.client.get("/api/taught?limit=1", auth=BASIC).json()["examples"]
    ] == [ids[2]]
    image = app.client.get(f"/taught-frames/{ids[0]}.jpg", auth=BASIC)
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content == SAMPLE.read_bytes()
    for bad in ("999.jpg", "x.jpg", f"{ids[0]}.png", "..%2Fsite.sqlite3", "9" * 30 + ".jpg"):
        assert app.client.get(f"/taught-frames/{bad}", auth=BASIC).status_code == 404, bad
    with SiteStore(app.site_store) as store:
        generation = store.generation()
    removed = app.client.post(f"/api/taught/{ids[0]}/remove", auth=BASIC)
    assert removed.status_code == 200 and removed.json() == {
        "id": ids[0], "label": "coffee_cup", "remaining": 1,
    }  # fmt: skip
    with SiteStore(app.site_store) as store:  # the loop sees the change counter move
        assert store.counts() == {"coffee_cup": 1, "paper": 1}
        assert store.generation() == generation + 1
    huge = app.client.post("/api/taught/" + "9" * 30 + "/remove", auth=BASIC)
    assert huge.status_code == 404, huge.text  # past SQLite's integers: still just not there
    again = app.client.post(f"/api/taught/{ids[0]}/remove", auth=BASIC)
    assert again.status_code == 404 and f"no site example {ids[0]}" in again.json()["detail"]
    with SiteStore(app.site_store) as store:  # `site add` from another process meanwhile
        store.add(label="paper", jpeg=b"\xff\xd8j", embedding=np.ones(8), model_sha256="ab" * 32,
                  source="file:/p.jpg")  # fmt: skip
    assert app.client.get("/api/taught", auth=BASIC).json()["labels"][0] == {
        "label": "paper", "count": 2, "bin": "recycling", "new": False,
    }  # fmt: skip
    page = app.client.get("/taught", auth=BASIC)
    assert page.status_code == 200 and 'id="taught-labels"' in page.text
    assert page.text.count('data-remove="') == 3 and "in no bin: fallback" in page.text
    assert f'src="/taught-frames/{ids[1]}.jpg"' in page.text
    few = re.search(r'id="few-examples">(.*?)</p>', page.text).group(1)  # a new label, 1 photo
    assert few.endswith("Fewer than 20 so far: coffee_cup.")


def test_the_taught_page_without_a_site_store(app, world):
    page = app.client.get("/taught", auth=BASIC)  # enabled, nothing taught: no file is made
    assert 'id="nothing-taught"' in page.text and not app.site_store.exists()
    off = Harness(world)
    off.console = Console(off.daemon.view, event_log_path=None, hooks=Hooks())
    client = TestClient(create_app(off.console, off.gate, off.settings, clock=off.clock))
    assert 'id="site-off"' in client.get("/taught", auth=BASIC).text
    assert client.get("/api/taught", auth=BASIC).json()["enabled"] is False
    assert client.post("/api/taught/1/remove", auth=BASIC).status_code == 404
    off.console.close()


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb's shape)."""
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    idat = b"IDAT" + zlib.compress(b"\x00" * 64)
    chunk += struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    return PNG_SIGNATURE + chunk


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"", 415, "empty file"),
        (b"hello, this is text", 415, "not a JPEG or PNG image"),
        (SAMPLE.read_bytes()[: len(SAMPLE.read_bytes()) // 2], 422, "not a decodable image"),
        (SAMPLE.read_bytes()[:200], 422, "not a decodable image"),
        (png_header_claiming(20000, 20000), 413, "20000x20000 pixels"),
        (b"GIF89a" + b"\x00" * 100, 415, "not a JPEG or PNG image"),
    ],
    ids=["empty", "text", "truncated-half", "truncated-header", "huge", "gif"],
)
def test_bad_uploads_are_a_clear_4xx_and_write_nothing(app, data, status, message):
    before = stored_files(app.folder)
    response = upload(app.client, data, auth=BASIC)
    assert response.status_code == status, response.text
    assert message in response.json()["detail"]
    assert stored_files(app.folder) == before


def test_uploads_over_the_size_cap_are_refused_before_reading_them(world):
    harness = Harness(world, max_upload_bytes=4096)
    try:
        big = SAMPLE.read_bytes() * 20
        response = upload(harness.client, big, auth=BASIC)
        assert response.status_code == 413 and "limit" in response.json()["detail"]
    finally:
        harness.console.close()


def test_an_upload_must_be_a_multipart_file(app):
    raw = app.client.post(
        "/api/classify",
        content=SAMPLE.read_bytes(),
        headers={"Content-Type": "image/jpeg"},
        auth=BASIC,
    )
    assert raw.status_code == 415 and "multipart" in raw.json()["detail"]
    no_file = app.client.post("/api/classify", data={"image": "x"}, files={}, auth=BASIC)
    assert no_file.status_code in (400, 415)
    fields_only = app.client.post(
        "/api/classify",
        files={"note": (None, b"just a field")},
        auth=BASIC,
    )
    assert fields_only.status_code == 400 and "no file" in fields_only.json()["detail"]


# ------------------------------------------------------------------------------ events


def test_events_with_a_time_filter_like_the_events_command(app):
    records = app.records()
    everything = app.client.get("/api/events?limit=1000", auth=BASIC).json()
    assert [e["item_id"] for e in everything] == [r["item_id"] for r in reversed(records)]
    since = records[10]["ts"]
    newer = app.client.get("/api/events", params={"since": since}, auth=BASIC).json()
    assert len(newer) == len([r for r in records if r["ts"] >= since])
    assert len(app.client.get("/api/events?limit=5", auth=BASIC).json()) == 5
    assert len(app.client.get("/api/events?since=1d", auth=BASIC).json()) == 24
    assert len(app.client.get("/api/events?since=99999999d", auth=BASIC).json()) == 24  # all
    bad = app.client.get("/api/events?since=yesterday", auth=BASIC)
    assert bad.status_code == 400 and "expected an ISO time" in bad.json()["detail"]


def test_events_csv_download(app):
    item = app.client.get("/api/review", auth=BASIC).json()["items"][0]
    app.client.post(f"/api/review/{item['item_id']}", json={"label": "paper"}, auth=BASIC)
    response = app.client.get("/api/events.csv?since=1d", auth=BASIC)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["item_id"] for r in rows] == [r["item_id"] for r in app.records()]
    corrected = next(r for r in rows if r["item_id"] == item["item_id"])
    assert corrected["corrected_label"] == "paper" and corrected["label"] == item["label"]
    assert app.client.get("/api/events.csv?since=nonsense", auth=BASIC).status_code == 400


def test_a_decision_the_site_head_changed_is_marked_everywhere(app):
    from bin_daemon.records.eventlog import EventLog
    from bin_daemon.records.events import SortEvent, iso_utc

    item_id = "20261205T120000000Z-abcdef-0099"
    log = EventLog(app.config.event_log_path())
    try:
        log.record(SortEvent(item_id, iso_utc(time.time()), "coffee_cup", 0.97, [], "landfill",
                             False, "ab" * 32, "x.jpg", {"total": 3}, site=True,
                             extra={"model_label": "paper"}))  # fmt: skip
    finally:
        log.close()
    items = {i["item_id"]: i for i in app.client.get("/api/events?since=1d", auth=BASIC).json()}
    assert (items[item_id]["site"], items[item_id]["model_label"]) == (True, "paper")
    assert sum(i["site"] for i in items.values()) == 1  # the model's own decisions are not
    page = app.client.get("/events?since=1d", auth=BASIC).text
    assert page.count('class="chip site"') == 1 and "changed the model's answer (paper)" in page
    rows = list(csv.DictReader(io.StringIO(app.client.get("/api/events.csv", auth=BASIC).text)))
    marked = [(r["item_id"], r["site"], r["model_label"]) for r in rows if r["site"] == "1"]
    assert marked == [(item_id, "1", "paper")]


def test_a_long_csv_is_read_in_pages(app, monkeypatch):
    from bin_daemon.console import state

    monkeypatch.setattr(state, "CSV_PAGE_ROWS", 5)
    rows = list(csv.DictReader(io.StringIO(app.client.get("/api/events.csv", auth=BASIC).text)))
    assert [r["item_id"] for r in rows] == [r["item_id"] for r in app.records()]  # all 24


def test_events_page_filters_and_links_the_csv(app):
    app.login()
    page = app.client.get("/events?since=1d&limit=50")
    assert page.status_code == 200
    assert page.text.count("<tr data-item=") == 24
    listed = app.client.get("/api/events?since=1d&limit=50", auth=BASIC).json()
    unsure = sum(item["unsure"] for item in listed)
    assert 0 < unsure < 24  # the sample run has some
    summary = re.search(r'id="events-summary">([^<]*)', page.text).group(1)
    assert summary.startswith(f"24 items, {unsure} unsure ({100 * unsure / 24:.0f}%), newest")
    assert 'href="/api/events.csv?since=1d"' in page.text
    bad = app.client.get("/events?since=bogus")
    assert bad.status_code == 400 and "expected an ISO time" in bad.text


def test_pages_are_escaped(app):
    """A hostile label from the site's list cannot inject markup."""
    app.console.hooks.extra_labels = lambda: ['"><script>alert(1)</script>']
    app.login()
    page = app.client.get("/review?show=all")
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;" in page.text


def test_bodies_other_than_uploads_are_small(app):
    item = app.client.get("/api/review", auth=BASIC).json()["items"][0]["item_id"]
    huge = '{"label": "glass", "padding": "' + "x" * 70_000 + '"}'
    response = app.client.post(
        f"/api/review/{item}",
        content=huge,
        headers={"Content-Type": "application/json"},
        auth=BASIC,
    )
    assert response.status_code == 413
    assert app.client.post("/login", data={"password": "x" * 70_000}).status_code == 413

    def chunks():
        yield b'{"label": "glass"}'

    chunked = app.client.post(
        f"/api/review/{item}",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        auth=BASIC,
    )
    assert chunked.status_code == 411
    assert all(r.get("corrected_label") is None for r in app.records())


def test_basic_credentials_that_are_not_base64_are_a_400(app):
    header = {"Authorization": "Basic !!!" + base64.b64encode(b"x").decode()}
    assert app.client.get("/api/status", headers=header).status_code == 400
