"""Property tests over the config: any YAML either loads or is a ConfigError that names the
file and a line (and the key, where there is one); never another exception."""

from __future__ import annotations

import io
import re

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from bin_daemon.config import Config, parse_config
from bin_daemon.errors import ConfigError

SOURCE = "fuzz.yaml"
LINE = re.compile(r"^fuzz\.yaml:\d+: \S")
KEY = r"([A-Za-z0-9_-]+|'[^']*'|\"[^\"]*\")"
KEYED = re.compile(rf"^fuzz\.yaml:\d+: (\(top level\)|{KEY}(\.{KEY}|\[\d+\])*): \S")

BASE = {
    "sensor": {"type": "ir", "gpio": 17},
    "bins": {
        "recycling": {"labels": ["cardboard", "paper"], "servo_gpio": 12},
        "landfill": {"labels": ["trash"], "servo_gpio": 18},
    },
    "fallback_bin": "landfill",
}


def schema_keys(model=Config) -> set[str]:
    """Every key name in the real schema (so generated trees hit real fields)."""
    from typing import get_args

    from pydantic import BaseModel

    keys: set[str] = set()
    for name, field in model.model_fields.items():
        keys.add(name)
        for kind in (field.annotation, *get_args(field.annotation)):
            for inner in (kind, *get_args(kind)):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    keys |= schema_keys(inner)
    return keys


KEYS = sorted(schema_keys() | {"ir", "hcsr04", "recycling", "glass", "landfill"})
key = st.one_of(st.sampled_from(KEYS), st.from_regex(r"[a-z_]{1,12}", fullmatch=True))
scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["ir", "hcsr04", "unsure", "all", "none", "refuse", "warn", "yes", "auto"]),
)
tree = st.recursive(
    scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(key, children, max_size=5)
    ),
    max_leaves=20,
)


@st.composite
def mutated_base(draw) -> dict:
    """The valid base with a few random edits: replace, add or delete a key at any depth."""
    import copy

    config = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 4))):
        node = config
        while isinstance(node, dict) and node and draw(st.booleans()):
            child = node[draw(st.sampled_from(sorted(node, key=str)))]
            if not isinstance(child, dict):
                break
            node = child
        action = draw(st.sampled_from(["replace", "add", "delete"]))
        if action == "delete" and node:
            del node[draw(st.sampled_from(sorted(node, key=str)))]
        elif action == "replace" and node:
            node[draw(st.sampled_from(sorted(node, key=str)))] = draw(tree)
        else:
            node[draw(key)] = draw(tree)
    return config


def dump(data) -> str:
    stream = io.StringIO()
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False  # block style: one key a line, so lines mean something
    yaml.dump(data, stream)
    return stream.getvalue()


def check(text: str) -> None:
    try:
        config = parse_config(text, source=SOURCE)
    except ConfigError as error:
        message = str(error)
        assert message, "an empty error"
        for line in message.splitlines():
            assert LINE.match(line), f"no file:line in {line!r}"
            if "YAML" not in line and "must be a mapping" not in line:
                assert KEYED.match(line), f"no key in {line!r}"
        return
    assert isinstance(config, Config)


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(mutated_base())
def test_any_edit_of_a_valid_config_loads_or_names_line_and_key(data):
    check(dump(data))


@SETTINGS
@given(st.dictionaries(key, tree, max_size=8))
def test_any_yaml_mapping_loads_or_names_line_and_key(data):
    check(dump(data))


YAML_CHARS = st.sampled_from([*list(":{}[]-#&*!|>'\"%@`,?\t\n "), "\n  ", "- ", ": ", "---"])


@SETTINGS
@given(st.lists(st.one_of(YAML_CHARS, st.sampled_from(KEYS), st.text(max_size=4)), max_size=30))
@example(["sensor: [\n"])
@example(["%YAML 9.9\n---\n"])
@example(["!!python/object:os.system {}"])
@example(["a: &x [*x]\nb: *y"])
@example(["\ufeffsensor: {type: ir, gpio: 17}\n\x00"])
def test_any_text_loads_or_names_the_line(parts):
    check("".join(parts))


def test_infinite_and_nan_numbers_are_refused_where_they_would_break_later():
    text = dump({**BASE, "spool": {"quota_mb": float("inf")}, "timing": {"cooldown_s": "nan"}})
    text = text.replace("cooldown_s: nan", "cooldown_s: .nan")
    try:
        parse_config(text, source=SOURCE)
    except ConfigError as error:
        message = str(error)
    assert "spool.quota_mb: Input should be a finite number" in message
    assert "timing.cooldown_s: Input should be a finite number" in message
