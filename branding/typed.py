"""A small typed-document toolkit: frozen dataclasses parsed from JSON with a pointer per failing field,
dumped back to canonical JSON, and described as JSON Schema (draft 2020-12) from the same type hints.

Supported annotations: str, int, bool, `X | None`, `tuple[X, ...]`, `dict[str, X]`, `Literal[...]` and
nested dataclasses. A field may carry `metadata={"json": "$value"}` to use another key in JSON, and
`metadata={"schema": {...}}` for extra JSON Schema keywords (pattern, bounds).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Problem:
    """One failing field: an RFC 6901 pointer, a stable code and a human sentence."""

    pointer: str
    code: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"pointer": self.pointer, "code": self.code, "detail": self.detail}


def escape_pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def json_name(field: dataclasses.Field) -> str:
    return field.metadata.get("json", field.name)


_hints_cache: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _hints_cache.get(cls)
    if hints is None:
        hints = get_type_hints(cls)
        _hints_cache[cls] = hints
    return hints


def _is_optional(annotation: Any) -> tuple[bool, Any]:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(get_args(annotation)) == 2:
            return True, args[0]
    return False, annotation


def _type_name(annotation: Any) -> str:
    if dataclasses.is_dataclass(annotation):
        return "object"
    origin = get_origin(annotation)
    if origin is tuple:
        return "array"
    if origin is dict:
        return "object"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(annotation))
    return {str: "string", int: "integer", bool: "boolean", float: "number"}.get(annotation, str(annotation))


def parse(cls: type[T], data: Any, problems: list[Problem], pointer: str = "") -> T | None:
    """Build `cls` from JSON data; append a `Problem` for each field that is missing, unknown or of the
    wrong type (and keep going, so that every failing field is reported at once)."""
    value = _parse_value(cls, data, problems, pointer)
    return None if value is _MISSING else value  # type: ignore[return-value]


_MISSING = object()


def _parse_value(annotation: Any, data: Any, problems: list[Problem], pointer: str) -> Any:
    optional, inner = _is_optional(annotation)
    if data is None:
        if optional:
            return None
        problems.append(Problem(pointer or "/", "required", f"A value ({_type_name(inner)}) is required."))
        return _MISSING
    annotation = inner
    if dataclasses.is_dataclass(annotation):
        if not isinstance(data, dict):
            problems.append(Problem(pointer or "/", "invalid_type", "An object is expected."))
            return _MISSING
        hints = _hints(annotation)
        values: dict[str, Any] = {}
        known = set()
        failed = False
        for field in dataclasses.fields(annotation):
            key = json_name(field)
            known.add(key)
            sub = f"{pointer}/{escape_pointer(key)}"
            if key not in data:
                has_default = (field.default is not dataclasses.MISSING
                               or field.default_factory is not dataclasses.MISSING)
                if has_default:
                    continue
                if _is_optional(hints[field.name])[0]:
                    values[field.name] = None
                    continue
                problems.append(Problem(sub, "required", "This field is required."))
                failed = True
                continue
            parsed = _parse_value(hints[field.name], data[key], problems, sub)
            if parsed is _MISSING:
                failed = True
            else:
                values[field.name] = parsed
        for key in sorted(set(data) - known):
            problems.append(Problem(f"{pointer}/{escape_pointer(str(key))}", "unknown_field",
                                    "This field is not part of the document."))
            failed = True
        return _MISSING if failed else annotation(**values)
    origin = get_origin(annotation)
    if origin is tuple:
        if not isinstance(data, list):
            problems.append(Problem(pointer or "/", "invalid_type", "An array is expected."))
            return _MISSING
        item_type = get_args(annotation)[0]
        items = [_parse_value(item_type, item, problems, f"{pointer}/{i}") for i, item in enumerate(data)]
        return _MISSING if any(i is _MISSING for i in items) else tuple(items)
    if origin is dict:
        if not isinstance(data, dict):
            problems.append(Problem(pointer or "/", "invalid_type", "An object is expected."))
            return _MISSING
        value_type = get_args(annotation)[1]
        out = {}
        for key in sorted(data):
            out[key] = _parse_value(value_type, data[key], problems, f"{pointer}/{escape_pointer(str(key))}")
        return _MISSING if any(v is _MISSING for v in out.values()) else out
    if origin is Literal:
        if data not in get_args(annotation) or isinstance(data, bool) != isinstance(get_args(annotation)[0], bool):
            problems.append(Problem(pointer or "/", "invalid_choice", f"Expected {_type_name(annotation)}."))
            return _MISSING
        return data
    if annotation is bool:
        ok = isinstance(data, bool)
    elif annotation is int:
        ok = isinstance(data, int) and not isinstance(data, bool)
    elif annotation is str:
        ok = isinstance(data, str)
    else:
        raise TypeError(f"unsupported annotation {annotation!r}")
    if not ok:
        problems.append(Problem(pointer or "/", "invalid_type", f"A {_type_name(annotation)} is expected."))
        return _MISSING
    return data


def dump(value: Any) -> Any:
    """The JSON form of a typed document (tuples as lists, dict keys sorted, aliases applied)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {json_name(f): dump(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [dump(v) for v in value]
    if isinstance(value, dict):
        return {k: dump(value[k]) for k in sorted(value)}
    return value


def json_schema(root: type, *, schema_id: str, title: str) -> dict[str, Any]:
    """A JSON Schema (2020-12) of `root`, with each nested dataclass under `$defs`."""
    defs: dict[str, Any] = {}
    body = _schema_of(root, defs)
    schema: dict[str, Any] = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": schema_id,
                              "title": title}
    schema.update(defs.pop(root.__name__))
    if defs:
        schema["$defs"] = {name: defs[name] for name in sorted(defs)}
    assert body == {"$ref": f"#/$defs/{root.__name__}"}
    return schema


def _schema_of(annotation: Any, defs: dict[str, Any]) -> dict[str, Any]:
    optional, inner = _is_optional(annotation)
    if optional:
        return {"anyOf": [_schema_of(inner, defs), {"type": "null"}]}
    if dataclasses.is_dataclass(annotation):
        name = annotation.__name__
        if name not in defs:
            defs[name] = {}  # placeholder against recursion
            hints = _hints(annotation)
            properties: dict[str, Any] = {}
            required = []
            for field in dataclasses.fields(annotation):
                key = json_name(field)
                sub = dict(_schema_of(hints[field.name], defs))
                sub.update(field.metadata.get("schema", {}))
                properties[key] = sub
                required.append(key)
            definition: dict[str, Any] = {"type": "object", "properties": properties, "required": required,
                                          "additionalProperties": False}
            doc = (annotation.__doc__ or "").strip()
            if doc and not doc.startswith(name + "("):
                definition["description"] = " ".join(doc.split())
            defs[name] = definition
        return {"$ref": f"#/$defs/{name}"}
    origin = get_origin(annotation)
    if origin is tuple:
        return {"type": "array", "items": _schema_of(get_args(annotation)[0], defs)}
    if origin is dict:
        return {"type": "object", "additionalProperties": _schema_of(get_args(annotation)[1], defs)}
    if origin is Literal:
        return {"enum": list(get_args(annotation))}
    mapping = {str: "string", int: "integer", bool: "boolean"}
    if annotation in mapping:
        return {"type": mapping[annotation]}
    raise TypeError(f"unsupported annotation {annotation!r}")
