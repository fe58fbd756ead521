"""Config validation against the workflow's JSON schema, with defaults and one-line errors."""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tomosift.errors import TomosiftError


def load_yaml(path: str | os.PathLike) -> Any:
    """Read a YAML file; a missing or malformed file is a one-line TomosiftError."""
    path = Path(path)
    if not path.is_file():
        raise TomosiftError(f"{path}: file not found")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise TomosiftError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc


def fill_defaults(config: dict, schema: Mapping) -> dict:
    """Insert the schema's ``default`` values for missing keys, recursively, in place."""
    properties = schema.get("properties", {})
    for key, subschema in properties.items():
        if key not in config and "default" in subschema:
            config[key] = copy.deepcopy(subschema["default"])
        if isinstance(config.get(key), dict) and "properties" in subschema:
            fill_defaults(config[key], subschema)
    return config


def validate_config(config: dict, schema: Mapping, source: str = "config") -> dict:
    """Fill defaults and validate ``config``; return it.

    Raises:
        TomosiftError: one line naming the key and the problem, e.g.
            ``config: simulation.snr[1]: -0.5 must be > 0``.
    """
    if not isinstance(config, dict):
        raise TomosiftError(f"{source}: the config must be a mapping of keys to values")
    config = fill_defaults(config, schema)
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise TomosiftError(f"{source}: {describe_error(error)}")
    return config


def describe_error(error: jsonschema.ValidationError) -> str:
    """A short, single-line description of a schema violation naming the key."""
    where = _key_path(error.absolute_path)
    value = error.instance
    validator = error.validator
    if validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        patterns = list(error.schema.get("patternProperties", {}))
        unknown = sorted(key for key in set(value) - set(allowed)
                         if not any(re.search(pattern, key) for pattern in patterns))
        parts = []
        for key in unknown:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            parts.append(f"unknown key '{_join(where, key)}'{hint}")
        allowed_text = ", ".join(allowed + [f"keys matching {p}" for p in patterns])
        return "; ".join(parts) + f"; allowed here: {allowed_text}"
    if validator == "required":
        return f"{where or 'top level'}: {error.message}"
    if validator == "type":
        return f"{where}: {value!r} is not of type {_type_name(error.validator_value)}"
    if validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        symbol = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=",
                  "exclusiveMaximum": "<"}[validator]
        return f"{where}: {value!r} must be {symbol} {error.validator_value}"
    if validator == "enum":
        return f"{where}: {value!r} is not one of {', '.join(map(str, error.validator_value))}"
    if validator == "oneOf" and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        return describe_error(best) if best is not None else f"{where}: invalid value {value!r}"
    return f"{where or 'top level'}: {' '.join(error.message.split())}"


def _key_path(path) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _type_name(value) -> str:
    if isinstance(value, list):
        return " or ".join(value)
    return {"integer": "integer", "number": "number", "string": "string"}.get(value, str(value))


def load_config(path: str | os.PathLike, schema_path: str | os.PathLike) -> dict:
    """Load, fill and validate a config file against a schema file."""
    schema = load_yaml(schema_path)
    return validate_config(load_yaml(path) or {}, schema, source=str(path))
