"""The study config's JSON schema: loaded once, defaults filled in, errors in words.

The schema is ``config.schema.yaml`` beside this module, plus one block per registered
analysis (``analyses/<name>/schema.yaml``, inserted at ``analyses.<name>``), so an analysis
brings its own config block with its folder. :func:`validate` fills the defaults and checks a
raw config; every error names the config key and the offending value.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

import yaml

from lorascope.study.spec import ConfigError

SCHEMA_RESOURCE = "config.schema.yaml"
SCHEMA_RESOURCE_OF_ANALYSIS = "schema.yaml"


@cache
def schema() -> dict[str, Any]:
    """The study config's JSON schema (shipped with the package), analyses' blocks included."""
    from lorascope.analyses.registry import ANALYSES

    root = yaml.safe_load(resources.files("lorascope.study").joinpath(SCHEMA_RESOURCE).read_text())
    blocks = root["properties"]["analyses"]["properties"]
    for analysis in ANALYSES:
        if analysis.schema:
            text = resources.files(analysis.package).joinpath(SCHEMA_RESOURCE_OF_ANALYSIS)
            blocks[analysis.name] = yaml.safe_load(text.read_text())
    return root


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _fill_defaults(node: Mapping[str, Any], value: Any, root: Mapping[str, Any]) -> None:
    """Insert the schema's defaults into ``value`` in place (properties, allOf, items)."""
    node = _resolve(node, root)
    if isinstance(value, dict):
        props = node.get("properties", {})
        for key, sub in props.items():
            sub = _resolve(sub, root)
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for sub in node.get("allOf", []):
            _fill_defaults(sub, value, root)
        extra = node.get("additionalProperties")
        for key, item in value.items():
            if key in props:
                _fill_defaults(props[key], item, root)
            elif isinstance(extra, dict):
                _fill_defaults(extra, item, root)
    elif isinstance(value, list) and isinstance(node.get("items"), dict):
        for item in value:
            _fill_defaults(node["items"], item, root)


def _key(path: Sequence[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _describe(error: Any) -> str:
    """A one-line, user-facing message for a jsonschema ValidationError."""
    key = _key(list(error.absolute_path))
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        allowed = sorted(_property_names(error.schema))
        extra = sorted(set(error.instance) - set(allowed))
        names = ", ".join(repr(e) for e in extra)
        return f"config key '{key}': unknown key {names} (allowed: {', '.join(allowed)})"
    if error.validator == "propertyNames":
        pattern = error.schema["propertyNames"]["pattern"]
        bad = [n for n in error.instance if not re.search(pattern, n)]
        return f"config key '{key}': invalid name {bad[0]!r} (names must match {pattern})"
    if error.validator == "oneOf":
        return f"config key '{key}': {json.dumps(error.instance)} is not a valid value here"
    return f"config key '{key}': {error.message}"


def _property_names(node: Mapping[str, Any]) -> set[str]:
    node = _resolve(node, schema())
    names = set(node.get("properties", {}))
    for sub in node.get("allOf", []):
        names |= _property_names(sub)
    return names


def _non_finite(value: Any, path: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
    """The key path of the first NaN or infinity in a config (None: there is none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, Mapping):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite(item, (*path, key))
        if found is not None:
            return found
    return None


@cache
def _validator_class() -> Any:
    """Draft 2020-12 with a strict ``integer``: ``1e9`` or ``2.0`` (floats in YAML) are not
    integers here, so counts and sizes never arrive as floats."""
    import jsonschema

    base = jsonschema.Draft202012Validator
    checker = base.TYPE_CHECKER.redefine(
        "integer", lambda _, value: isinstance(value, int) and not isinstance(value, bool))
    return jsonschema.validators.extend(base, type_checker=checker)


def validate(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults filled in and validated against the schema; raises :class:`ConfigError`.

    Beyond the schema: no NaN or infinity anywhere (``lr: .nan`` is no learning rate), and
    integers are integers (``queries: 1e9`` is a float in YAML, refused)."""
    import jsonschema

    bad = _non_finite(raw)
    if bad is not None:
        raise ConfigError(f"invalid study config:\n  config key '{_key(list(bad))}': "
                          "not a finite number (NaN or infinity)")
    config = copy.deepcopy(dict(raw))
    root = schema()
    _fill_defaults(root, config, root)
    validator = _validator_class()(root)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        best = jsonschema.exceptions.best_match(errors)
        messages = [_describe(best)] + [_describe(e) for e in errors if e is not best]
        raise ConfigError("invalid study config:\n  " + "\n  ".join(dict.fromkeys(messages)))
    return config

