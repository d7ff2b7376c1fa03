"""The broker password: never in the YAML file.

Looked up, in order: the systemd credential ``mqtt_password`` (``LoadCredential=`` puts it
in ``$CREDENTIALS_DIRECTORY``, readable by the service only), then ``$BIN_DAEMON_MQTT_PASSWORD``
(e.g. from an ``EnvironmentFile=`` readable by root only).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from bin_daemon.errors import ConfigError

CREDENTIAL_NAME = "mqtt_password"
ENV_VAR = "BIN_DAEMON_MQTT_PASSWORD"


def mqtt_password(environ: Mapping[str, str] | None = None) -> str | None:
    """The password, or None when neither source has one."""
    env = os.environ if environ is None else environ
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory:
        path = Path(directory) / CREDENTIAL_NAME
        if path.is_file():
            try:
                return path.read_text(encoding="utf-8").rstrip("\r\n")
            except (OSError, UnicodeDecodeError) as error:
                raise ConfigError(f"{path}: cannot read the MQTT password ({error})") from None
    value = env.get(ENV_VAR)
    return value if value else None
