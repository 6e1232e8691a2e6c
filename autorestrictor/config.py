"""Configuration the Dask way: a YAML of defaults, a JSON-schema YAML, and
``dask.config``.

Values are read when an :class:`Options` is built (at plugin construction or
at each ``plan()`` call), never at import time, so ``dask.config.set`` works
as Dask users expect. Any key can be overridden by a keyword argument with
underscores for hyphens (``min_tasks=10`` for ``autorestrictor.min-tasks``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

import dask.config
import yaml

_here = os.path.dirname(__file__)

with open(os.path.join(_here, "autorestrictor.yaml")) as f:
    DEFAULTS: dict = yaml.safe_load(f)
with open(os.path.join(_here, "autorestrictor-schema.yaml")) as f:
    SCHEMA: dict = yaml.safe_load(f)

dask.config.update_defaults(DEFAULTS)

_PROPERTIES: dict[str, dict] = SCHEMA["properties"]["autorestrictor"]["properties"]


@dataclass(frozen=True)
class Options:
    """Every setting of the plugin and planner; each is described in
    ``autorestrictor-schema.yaml`` (defaults in ``autorestrictor.yaml``)."""

    enabled: bool
    min_tasks: int
    partition_factor: float
    light_edge_fraction: float
    balance_tolerance: float
    balanced_tolerance: float
    subtree_tolerance: float
    max_cut_fraction: float
    admission: bool
    admission_max_readers: int
    rebalance: bool
    rebalance_min_gain: float
    rebalance_min_left: float
    rebalance_interval: float
    paused_timeout: float
    memory_tolerance: float
    check_interval: float
    history: int

    @classmethod
    def from_config(cls, **overrides: Any) -> Options:
        """Read ``autorestrictor.*`` from ``dask.config``; keywords win.

        Raises
        ------
        TypeError
            For a keyword that is not an option.
        ValueError
            For a value outside what the schema allows; the message names the
            key and the allowed values.
        """
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(
                f"unknown option(s) {sorted(unknown)}; valid options are {sorted(names)}"
            )
        values = {}
        for name in names:
            key = name.replace("_", "-")
            value = overrides.get(name)
            if value is None:
                # The default is passed too: test harnesses (gen_cluster) and
                # users may replace dask.config wholesale.
                value = dask.config.get(
                    f"autorestrictor.{key}", default=DEFAULTS["autorestrictor"][key]
                )
            values[name] = validate(key, value)
        return cls(**values)


def validate(key: str, value: Any) -> Any:
    """Check ``value`` against the schema of ``autorestrictor.<key>``.

    Returns the value converted to its type (an ``int`` given for a number
    becomes a ``float``); raises ``ValueError`` naming the key and the
    allowed values otherwise.
    """
    spec = _PROPERTIES[key]
    kind = spec["type"]
    allowed = _describe(spec)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ValueError(f"autorestrictor.{key} must be {allowed}, got {value!r}")
        return value
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "integer" and not (numeric and float(value).is_integer()):
        raise ValueError(f"autorestrictor.{key} must be {allowed}, got {value!r}")
    if kind == "number" and not numeric:
        raise ValueError(f"autorestrictor.{key} must be {allowed}, got {value!r}")
    if (
        value != value  # NaN
        or ("minimum" in spec and value < spec["minimum"])
        or ("maximum" in spec and value > spec["maximum"])
        or ("exclusiveMinimum" in spec and value <= spec["exclusiveMinimum"])
    ):
        raise ValueError(f"autorestrictor.{key} must be {allowed}, got {value!r}")
    return int(value) if kind == "integer" else float(value)


def _describe(spec: dict) -> str:
    kind = {"boolean": "true or false", "integer": "an integer", "number": "a number"}
    bounds = []
    if "minimum" in spec:
        bounds.append(f">= {spec['minimum']}")
    if "exclusiveMinimum" in spec:
        bounds.append(f"> {spec['exclusiveMinimum']}")
    if "maximum" in spec:
        bounds.append(f"<= {spec['maximum']}")
    return kind[spec["type"]] + (" " + " and ".join(bounds) if bounds else "")
