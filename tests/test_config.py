"""The YAML defaults, their schema, and validation."""

import dask
import pytest

from autorestrictor.config import DEFAULTS, SCHEMA, Options, validate


def test_schema_and_defaults_are_in_sync():
    props = SCHEMA["properties"]["autorestrictor"]["properties"]
    assert set(DEFAULTS["autorestrictor"]) == set(props)
    for key, value in DEFAULTS["autorestrictor"].items():
        assert validate(key, value) == value
        assert props[key].get("description"), f"{key} has no description"


def test_every_option_has_a_config_key():
    from dataclasses import fields

    names = {f.name.replace("_", "-") for f in fields(Options)}
    assert names == set(DEFAULTS["autorestrictor"])


def test_config_is_read_at_construction_and_keywords_win():
    with dask.config.set({"autorestrictor.min-tasks": 7}):
        assert Options.from_config().min_tasks == 7
        assert Options.from_config(min_tasks=3).min_tasks == 3
    assert Options.from_config().min_tasks == DEFAULTS["autorestrictor"]["min-tasks"]


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("enabled", 1, "true or false"),
        ("min-tasks", 2.5, "an integer >= 1"),
        ("min-tasks", 0, "an integer >= 1"),
        ("partition-factor", 0, "> 0"),
        ("light-edge-fraction", 1.5, "<= 1"),
        ("balance-tolerance", "high", "a number"),
        ("max-cut-fraction", float("nan"), "a number"),
        ("history", -1, ">= 0"),
    ],
)
def test_invalid_values_name_key_and_allowed_values(key, value, match):
    with pytest.raises(ValueError, match=f"autorestrictor.{key} must be .*{match}"):
        validate(key, value)
