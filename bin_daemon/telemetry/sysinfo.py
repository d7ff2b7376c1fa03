"""CPU temperature and throttling, only where the machine offers them.

A Pi has ``/sys/class/thermal/thermal_zone0/temp`` (millidegrees) and ``vcgencmd
get_throttled`` (``throttled=0x50000``). Elsewhere they are absent: the fields are left out
of the metrics, without a warning; a command that is missing or fails is not run again.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

THERMAL_PATH = Path("/sys/class/thermal/thermal_zone0/temp")
THROTTLED_COMMAND: tuple[str, ...] = ("vcgencmd", "get_throttled")
THROTTLE_FLAGS = {
    0: "under_voltage",
    1: "frequency_capped",
    2: "throttled",
    3: "soft_temperature_limit",
    16: "under_voltage_occurred",
    17: "frequency_capped_occurred",
    18: "throttled_occurred",
    19: "soft_temperature_limit_occurred",
}
"""Bits of ``get_throttled`` (Raspberry Pi documentation)."""


def throttle_flags(value: int) -> list[str]:
    return [name for bit, name in THROTTLE_FLAGS.items() if value & (1 << bit)]


class SystemProbe:
    def __init__(
        self,
        *,
        thermal_path: Path | None = THERMAL_PATH,
        throttled_command: Sequence[str] | None = THROTTLED_COMMAND,
        run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
    ) -> None:
        self.thermal_path = thermal_path
        self.throttled_command = tuple(throttled_command) if throttled_command else None
        self._run = run

    def cpu_temperature_c(self) -> float | None:
        if self.thermal_path is None:
            return None
        try:
            return round(int(self.thermal_path.read_text().strip()) / 1000.0, 1)
        except (OSError, ValueError):
            return None

    def throttled(self) -> int | None:
        if self.throttled_command is None:
            return None
        try:
            done = self._run(
                list(self.throttled_command), capture_output=True, text=True, timeout=2, check=False
            )
            match = re.search(r"throttled=(0x[0-9a-fA-F]+)", done.stdout or "")
            if done.returncode != 0 or match is None:
                raise ValueError(f"exit status {done.returncode}: {done.stdout!r}")
            return int(match.group(1), 16)
        except (OSError, ValueError, subprocess.SubprocessError) as error:
            log.debug("%s: not readable here (%s); not asked again", self.throttled_command, error)
            self.throttled_command = None
            return None

    def readings(self) -> dict[str, Any]:
        """``cpu_temp_c``, ``throttled`` (hex) and ``throttle_flags``, each only if readable."""
        out: dict[str, Any] = {}
        temperature = self.cpu_temperature_c()
        if temperature is not None:
            out["cpu_temp_c"] = temperature
        throttled = self.throttled()
        if throttled is not None:
            out["throttled"] = f"{throttled:#x}"
            out["throttle_flags"] = throttle_flags(throttled)
        return out
