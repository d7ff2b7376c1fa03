"""systemd/bin-daemon.service: what it promises, ``systemd-analyze verify`` and its exposure.

``verify`` checks that every ExecStart= binary exists, so it runs against a root staged by
deploy/install.sh, with a stand-in bin-daemon executable and a copy of this machine's own
systemd units (for the targets the unit names). A unit with a typo must fail the same check,
so a clean result means something.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest_tools import require_tool

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "bin-daemon.service"
MAX_EXPOSURE = 2.0
ANALYZE = shutil.which("systemd-analyze")


@pytest.fixture
def needs_analyze() -> None:
    require_tool(ANALYZE, "systemd-analyze", "systemd")


HOST_UNITS = next(
    (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()),
    None,
)


def directives(path: Path = UNIT) -> dict[str, list[str]]:
    """``Section.Key`` -> every value it is given (systemd allows repeats)."""
    out: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


def one(key: str) -> str:
    values = directives()[key]
    assert len(values) == 1, f"{key} given {len(values)} times"
    return values[0]


# ----------------------------------------------------------------- what the unit says


def test_notify_watchdog_restart_and_user() -> None:
    assert one("Service.Type") == "notify"
    assert one("Service.NotifyAccess") == "main"
    assert 10 <= int(one("Service.WatchdogSec")) <= 120
    assert one("Service.Restart") == "on-failure"
    assert one("Service.User") == "bin-daemon"
    assert set(one("Service.SupplementaryGroups").split()) == {"gpio", "video"}
    assert int(one("Unit.StartLimitBurst")) >= 3
    assert int(one("Unit.StartLimitIntervalSec")) > 0


def test_commands_follow_the_layout_contract() -> None:
    config = "--config /etc/bin-daemon/config.yaml"
    assert (
        one("Service.ExecStartPre") == f"/opt/bin-daemon/venv/bin/bin-daemon check-config {config}"
    )
    assert (
        one("Service.ExecStart")
        == f"/opt/bin-daemon/venv/bin/bin-daemon run {config} --hardware pi"
    )
    assert one("Service.ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one("Service.StateDirectory") == "bin-daemon"
    assert one("Install.WantedBy") == "multi-user.target"


def test_only_the_devices_it_needs() -> None:
    assert one("Service.DevicePolicy") == "closed"
    allowed = {value.split()[0] for value in directives()["Service.DeviceAllow"]}
    assert allowed == {
        "char-gpiochip",  # /dev/gpiochip* (lgpio)
        "char-video4linux",  # /dev/video*, /dev/v4l-subdev* (libcamera)
        "char-media",  # /dev/media*
        "char-dma_heap",  # /dev/dma_heap/* (libcamera's frame buffers)
        "char-vchiq",  # /dev/vchiq (Pi 4 VideoCore)
    }


def test_read_only_system_and_no_privileges() -> None:
    assert one("Service.ProtectSystem") == "strict"
    assert one("Service.NoNewPrivileges") == "yes"
    assert one("Service.CapabilityBoundingSet") == ""
    assert "Service.ReadWritePaths" not in directives()  # only StateDirectory/RuntimeDirectory
    # lgpio writes its FIFOs into the working directory: it must be the writable runtime dir.
    assert one("Service.RuntimeDirectory") == "bin-daemon"
    assert one("Service.WorkingDirectory") == "/run/bin-daemon"


# ----------------------------------------------------------------- systemd-analyze


def _analyze(*args: str) -> subprocess.CompletedProcess:
    assert ANALYZE is not None
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def staged_root(tmp_path: Path) -> Path:
    if HOST_UNITS is None:
        pytest.skip("no systemd unit directory on this machine to stage")
    root = tmp_path / "root"
    done = subprocess.run(
        ["bash", str(REPO / "deploy" / "install.sh"), "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    program = root / "opt/bin-daemon/venv/bin/bin-daemon"
    program.parent.mkdir(parents=True)
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    shutil.copytree(HOST_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy2(shutil.which("kill") or "/bin/kill", root / "usr/bin/kill")
    (root / "bin").symlink_to("usr/bin")
    (root / "lib").symlink_to("usr/lib")
    return root


@pytest.mark.usefixtures("needs_analyze")
def test_verify_is_clean_on_the_installed_unit(staged_root: Path) -> None:
    done = _analyze("verify", f"--root={staged_root}", "bin-daemon.service")
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", (
        done.stdout + done.stderr
    )


@pytest.mark.usefixtures("needs_analyze")
def test_verify_would_catch_a_broken_unit(staged_root: Path) -> None:
    unit = staged_root / "etc/systemd/system/bin-daemon.service"
    unit.write_text(
        unit.read_text()
        .replace("Type=notify", "Type=notfiy")
        .replace(
            "/opt/bin-daemon/venv/bin/bin-daemon run", "/opt/bin-daemon/venv/bin/bin-deamon run"
        )
    )
    done = _analyze("verify", f"--root={staged_root}", "bin-daemon.service")
    assert done.returncode != 0
    assert "notfiy" in done.stderr and "bin-deamon" in done.stderr


@pytest.mark.usefixtures("needs_analyze")
def test_security_exposure_is_at_most_2() -> None:
    done = _analyze("security", "--offline=true", str(UNIT))
    match = re.search(r"Overall exposure level for bin-daemon\.service: (\d+\.\d+)", done.stdout)
    assert match, done.stdout[-500:] + done.stderr
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, done.stdout
    # Record it where a maintainer looks: the number in docs/DEPLOY_CHECKS.md is the measured one.
    checks = (REPO / "docs" / "DEPLOY_CHECKS.md").read_text()
    assert f"exposure {exposure:.1f}" in checks


# ----------------------------------------------------------------- the MQTT drop-in

DROP_INS = REPO / "systemd" / "bin-daemon.service.d"


def test_mqtt_drop_in_opens_only_what_mqtt_needs() -> None:
    values = directives(DROP_INS / "mqtt.conf.example")
    assert values["Service.PrivateNetwork"] == ["no"]
    assert values["Service.RestrictAddressFamilies"] == ["", "AF_UNIX AF_NETLINK AF_INET AF_INET6"]
    allowed = values["Service.IPAddressAllow"]
    assert "any" not in allowed  # the broker and DNS only, not the world
    # A broker given by name needs the resolvers of /etc/resolv.conf: on Raspberry Pi OS
    # Bookworm (NetworkManager) that is the router, not a stub on localhost.
    resolvers = [a for a in allowed if a not in ("localhost", "192.0.2.10")]
    assert resolvers, allowed
    assert "grep ^nameserver /etc/resolv.conf" in (DROP_INS / "mqtt.conf.example").read_text()
    assert values["Service.LoadCredential"] == ["mqtt_password:/etc/bin-daemon/mqtt_password"]
    assert directives()["Service.IPAddressDeny"] == ["any"]  # the unit stays closed without it


@pytest.mark.usefixtures("needs_analyze")
@pytest.mark.parametrize("name", ["mqtt", "prometheus", "console"])
def test_verify_is_clean_with_the_drop_in(staged_root: Path, name: str) -> None:
    folder = staged_root / "etc/systemd/system/bin-daemon.service.d"
    folder.mkdir(parents=True)
    drop_in = folder / f"{name}.conf"
    shutil.copy(DROP_INS / f"{name}.conf.example", drop_in)
    done = _analyze("verify", f"--root={staged_root}", "bin-daemon.service")
    assert done.returncode == 0 and done.stderr == "" and done.stdout == "", (
        done.stdout + done.stderr
    )
    drop_in.write_text(drop_in.read_text().replace("[Service]", "[Service]\nPrivateNetwrok=no"))
    done = _analyze("verify", f"--root={staged_root}", "bin-daemon.service")
    assert "PrivateNetwrok" in done.stderr  # the same check sees a typo in the drop-in


@pytest.mark.usefixtures("needs_analyze")
@pytest.mark.parametrize(
    ("allow", "valid"),
    [
        ("192.168.1.0/24", True),  # the router's subnet, when DHCP may change the resolver
        ("link-local", True),  # an IPv6 router as resolver (nameserver fe80::1%wlan0)
        ("fe80::1", True),
        ("broker.example.org", False),  # a host name: systemd cannot take one here
    ],
)
def test_the_drop_ins_documented_dns_alternatives_parse(
    staged_root: Path, allow: str, valid: bool
) -> None:
    folder = staged_root / "etc/systemd/system/bin-daemon.service.d"
    folder.mkdir(parents=True)
    text = (DROP_INS / "mqtt.conf.example").read_text()
    (folder / "mqtt.conf").write_text(
        text.replace("IPAddressAllow=192.168.1.1", f"IPAddressAllow={allow}")
    )
    done = _analyze("verify", f"--root={staged_root}", "bin-daemon.service")
    if valid:
        assert done.returncode == 0 and done.stderr == "", done.stderr
    else:
        assert allow in done.stderr, done.stderr


# ----------------------------------------------------------------- the console drop-in


def test_console_drop_in_opens_exactly_the_console_port() -> None:
    values = directives(DROP_INS / "console.conf.example")
    assert values["Service.PrivateNetwork"] == ["no"]
    assert values["Service.RestrictAddressFamilies"] == ["", "AF_UNIX AF_NETLINK AF_INET AF_INET6"]
    assert values["Service.SocketBindAllow"] == ["tcp:8080"]  # the example's console.listen
    assert values["Service.SocketBindDeny"] == ["any"]  # no other port may be bound
    assert values["Service.IPAddressAllow"] == ["localhost"]  # this Pi; the LAN is opt-in
    assert values["Service.LoadCredential"] == ["console_password:/etc/bin-daemon/console_password"]
    default = (REPO / "bin_daemon" / "default_config.yaml").read_text()
    assert "127.0.0.1:8080" in default  # the port the drop-in opens is the one it suggests


def _exposure_with(tmp_path: Path, drop_in: str) -> float:
    units = tmp_path / "etc/systemd/system"
    (units / "bin-daemon.service.d").mkdir(parents=True)
    shutil.copy(UNIT, units / "bin-daemon.service")
    (units / "bin-daemon.service.d" / "console.conf").write_text(drop_in)
    done = _analyze("security", "--offline=true", f"--root={tmp_path}", "bin-daemon.service")
    match = re.search(r"Overall exposure level for bin-daemon\.service: (\d+\.\d+)", done.stdout)
    assert match, done.stdout[-500:] + done.stderr
    return float(match.group(1))


@pytest.mark.usefixtures("needs_analyze")
def test_security_exposure_with_the_console_drop_in_is_at_most_2(tmp_path: Path) -> None:
    example = (DROP_INS / "console.conf.example").read_text()
    exposure = _exposure_with(tmp_path / "local", example)
    assert exposure <= MAX_EXPOSURE
    checks = (REPO / "docs" / "DEPLOY_CHECKS.md").read_text()
    assert f"console drop-in: exposure {exposure:.1f}" in checks
    # opened to a local network as well, as its comment suggests
    lan = example.replace("IPAddressAllow=localhost", "IPAddressAllow=localhost 192.168.1.0/24")
    assert _exposure_with(tmp_path / "lan", lan) <= MAX_EXPOSURE
