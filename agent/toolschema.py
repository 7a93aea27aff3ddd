"""JSON schemas from Python signatures, and a small validator for exactly the schemas made here.

`function_spec(fn)` reads a function's type hints and docstring and returns what a model is told
about it (description, JSON-schema parameters) plus a decoder that turns validated JSON
arguments back into Python values (dataclass instances, Enum members, floats for ints).

Supported types: str, int, float, bool, None, Any, Literal[...], Enum subclasses, X | None,
unions, list[X], tuple[X, ...], dict[str, X], dataclasses and TypedDicts (nested freely), and
Annotated[X, "description"]. Descriptions come from the docstring: its text up to the first
section is the tool's description; a Google-style ``Args:`` section (or Sphinx ``:param x:``
lines) gives each parameter's. A dataclass's or TypedDict's ``Attributes:``/``Args:`` section
describes its fields.

`validate(schema, value)` checks a JSON value against such a schema and returns readable error
lines ("city: expected a string, got 3"); it knows only the keywords generated here (type,
enum, properties, required, additionalProperties, items, anyOf).
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict

__all__ = ["FunctionSpec", "SchemaError", "function_spec", "schema_for", "validate"]

JSON = dict[str, Any]

_SECTION = re.compile(
    r"^(Args|Arguments|Parameters|Params|Attributes|Returns?|Yields?|Raises|Examples?|Notes?|"
    r"See Also|Warnings?|References|Todo)\s*:\s*$"
)
_PARAM_SECTIONS = {"Args", "Arguments", "Parameters", "Params", "Attributes"}
_GOOGLE_ITEM = re.compile(r"^\*{0,2}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_SPHINX_PARAM = re.compile(r"^:param\s+(?:[^:]+\s)?(\w+)\s*:\s*(.*)$")


class SchemaError(TypeError):
    """A function cannot become a tool as written (the message says which parameter and why)."""


@dataclass(frozen=True)
class FunctionSpec:
    """What `function_spec` learned about a function."""

    description: str
    parameters: JSON  # a JSON schema of type "object"
    decode: Callable[[Mapping[str, Any]], dict[str, Any]]  # valid JSON args -> keyword args
    injected: tuple[str, ...]  # parameters filled by the caller, not the model


def function_spec(
    fn: Callable[..., Any], *, inject: Callable[[Any], bool] = lambda _hint: False
) -> FunctionSpec:
    """Describe ``fn`` for a model. Parameters whose annotation satisfies ``inject`` are left out
    of the schema (the caller passes them, e.g. a tool context). Raises `SchemaError`."""
    where = getattr(fn, "__qualname__", repr(fn))
    try:
        hints = get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise SchemaError(f"cannot read the type hints of {where}: {exc}") from None
    summary, param_docs = parse_docstring(inspect.getdoc(fn) or "")
    properties: JSON = {}
    required: list[str] = []
    kinds: dict[str, Any] = {}
    injected: list[str] = []
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise SchemaError(
                f"parameter {name!r} of {where}: *args, **kwargs and positional-only "
                "parameters cannot be filled from a model's JSON arguments; name each one"
            )
        if name not in hints:
            raise SchemaError(
                f"parameter {name!r} of {where} has no type annotation: annotate it (e.g. "
                f"`{name}: str`) so the model knows what to send"
            )
        hint = hints[name]
        if inject(hint):
            injected.append(name)
            continue
        schema = schema_for(hint, f"parameter {name!r} of {where}")
        if name in param_docs:  # the parameter's own text wins over its type's
            schema = {"description": param_docs[name], **_without(schema, "description")}
        if param.default is param.empty:
            required.append(name)
        elif _json_default(param.default) is not _NO_DEFAULT:
            schema["default"] = _json_default(param.default)
        properties[name] = schema
        kinds[name] = hint

    def decode(arguments: Mapping[str, Any]) -> dict[str, Any]:
        return {key: convert(kinds[key], value) for key, value in arguments.items()}

    parameters: JSON = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    return FunctionSpec(summary, parameters, decode, tuple(injected))


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """The summary (text before the first section) and per-parameter descriptions."""
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    indent = 0
    for raw in doc.splitlines():
        line = raw.strip()
        header = _SECTION.match(line)
        sphinx = _SPHINX_PARAM.match(line)
        if header:
            section, current = header.group(1), None
        elif sphinx:
            section, current = "sphinx", sphinx.group(1)
            params[current] = sphinx.group(2).strip()
        elif section is None:
            summary.append(line)
        elif section in _PARAM_SECTIONS and line:
            item_indent = len(raw) - len(raw.lstrip())
            item = _GOOGLE_ITEM.match(line)
            if item and (current is None or item_indent <= indent):
                current, indent = item.group(1), item_indent
                params[current] = item.group(2).strip()
            elif current is not None:
                params[current] = f"{params[current]} {line}".strip()
        elif section == "sphinx" and current is not None and line and not line.startswith(":"):
            params[current] = f"{params[current]} {line}".strip()
    blocks = "\n".join(summary).split("\n\n")
    text = "\n\n".join(" ".join(block.split()) for block in blocks if block.strip())
    return text, params


def schema_for(hint: Any, where: str = "a parameter") -> JSON:
    """The JSON schema of a type hint. Raises `SchemaError` for types a model cannot send."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is typing.Annotated:
        schema = schema_for(args[0], where)
        notes = [a for a in args[1:] if isinstance(a, str)]
        return {"description": " ".join(notes), **schema} if notes else schema
    if hint is Any:
        return {}
    if hint is None or hint is type(None):
        return {"type": "null"}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is str:
        return {"type": "string"}
    if origin is Literal:
        return _enum_schema(list(args), where)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum_schema([member.value for member in hint], where)
    if origin in (Union, types.UnionType):
        return _union_schema(args, where)
    if hint in (list, tuple, dict):
        raise SchemaError(f"{where}: say what the {hint.__name__} holds, e.g. list[str]")
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return {"type": "array", "items": schema_for(args[0], where)}
    if origin is dict:
        if args[0] is not str:
            raise SchemaError(f"{where}: a dict needs str keys, e.g. dict[str, int]")
        return {"type": "object", "additionalProperties": schema_for(args[1], where)}
    if isinstance(hint, type) and (dataclasses.is_dataclass(hint) or is_typeddict(hint)):
        return _record_schema(hint, where)
    raise SchemaError(
        f"{where}: type {_name(hint)} is not supported; use str, int, float, bool, Literal, an "
        "Enum, list[...], dict[str, ...], Optional, a dataclass or a TypedDict"
    )


def _enum_schema(values: list[Any], where: str) -> JSON:
    kinds = {_json_type(value) for value in values}
    if None in kinds or not values:
        raise SchemaError(f"{where}: choices must be strings, numbers or booleans: {values!r}")
    schema: JSON = {"enum": values}
    if len(kinds) == 1:
        schema = {"type": kinds.pop(), **schema}
    return schema


def _union_schema(args: tuple[Any, ...], where: str) -> JSON:
    members = [a for a in args if a is not type(None)]
    nullable = len(members) < len(args)
    if len(members) == 1:
        inner = schema_for(members[0], where)
        kind = inner.get("type")
        if nullable and isinstance(kind, str):
            widened = {**inner, "type": [kind, "null"]}
            if "enum" in inner:
                widened["enum"] = [*inner["enum"], None]
            return widened
        return {"anyOf": [inner, {"type": "null"}]} if nullable else inner
    options = [schema_for(member, where) for member in members]
    if nullable:
        options.append({"type": "null"})
    return {"anyOf": options}


def _record_schema(cls: type, where: str) -> JSON:
    hints = get_type_hints(cls, include_extras=True)
    doc = cls.__doc__ or ""
    if doc.startswith(f"{cls.__name__}("):  # the signature dataclasses write by default
        doc = ""
    summary, field_docs = parse_docstring(inspect.cleandoc(doc))
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.init
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
    else:
        names = list(hints)
        required = [n for n in names if n in getattr(cls, "__required_keys__", names)]
    properties: JSON = {}
    for name in names:
        schema = schema_for(hints[name], f"field {name!r} of {cls.__name__} ({where})")
        if name in field_docs:
            schema = {"description": field_docs[name], **_without(schema, "description")}
        properties[name] = schema
    record: JSON = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    return {"description": summary, **record} if summary else record


def convert(hint: Any, value: Any) -> Any:
    """A JSON value (already valid for ``schema_for(hint)``) as the Python value ``hint`` names."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is typing.Annotated:
        return convert(args[0], value)
    if value is None:
        return None
    if hint is float:
        return float(value)
    if hint is int:
        return int(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if origin in (Union, types.UnionType):
        for member in args:
            if member is not type(None) and not validate(schema_for(member), value):
                return convert(member, value)
        return value
    if origin is list:
        return [convert(args[0], item) for item in value]
    if origin is tuple:
        return tuple(convert(args[0], item) for item in value)
    if origin is dict:
        return {key: convert(args[1], item) for key, item in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = get_type_hints(hint, include_extras=True)
        return hint(**{key: convert(hints[key], item) for key, item in value.items()})
    if isinstance(hint, type) and is_typeddict(hint):
        hints = get_type_hints(hint, include_extras=True)
        return {key: convert(hints[key], item) for key, item in value.items()}
    return value


def validate(schema: Mapping[str, Any], value: Any, path: str = "") -> list[str]:
    """Why ``value`` does not fit ``schema`` (one line each; empty: it fits)."""
    where = path or "arguments"
    if "anyOf" in schema:
        if any(not validate(option, value, path) for option in schema["anyOf"]):
            return []
        return [f"{where}: {_show(value)} matches none of the allowed shapes"]
    kind = schema.get("type")
    if kind is not None:
        allowed = [kind] if isinstance(kind, str) else list(kind)
        if not any(_is_type(value, k) for k in allowed):
            return [f"{where}: expected {' or '.join(_A[k] for k in allowed)}, got {_show(value)}"]
    if "enum" in schema and not any(_same(value, choice) for choice in schema["enum"]):
        choices = ", ".join(_show(c) for c in schema["enum"])
        return [f"{where}: {_show(value)} is not one of {choices}"]
    errors: list[str] = []
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += validate(schema["items"], item, f"{where}[{i}]")
    if isinstance(value, dict):
        properties: Mapping[str, Any] = schema.get("properties", {})
        prefix = f"{path}." if path else ""
        errors += [
            f"{prefix}{name}: missing" for name in schema.get("required", ()) if name not in value
        ]
        extra = schema.get("additionalProperties", True)
        for name, item in value.items():
            if name in properties:
                errors += validate(properties[name], item, f"{prefix}{name}")
            elif extra is False:
                known = ", ".join(properties) or "none"
                errors.append(f"{prefix}{name}: unexpected (known: {known})")
            elif isinstance(extra, Mapping):
                errors += validate(extra, item, f"{prefix}{name}")
    return errors


_A = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "null": "null",
    "array": "a list",
    "object": "an object",
}


def _is_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        if isinstance(value, float):
            return value.is_integer()
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return _json_type(value) == kind


def _json_type(value: Any) -> str | None:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return None


def _same(value: Any, choice: Any) -> bool:
    """JSON equality: true is not 1."""
    return type(value) is type(choice) and bool(value == choice)


def _show(value: Any) -> str:
    text = "null" if value is None else repr(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    return text if len(text) <= 60 else text[:57] + "..."


_NO_DEFAULT = object()


def _json_default(default: Any) -> Any:
    """A parameter's default as JSON, or _NO_DEFAULT when it has no JSON form."""
    if isinstance(default, enum.Enum):
        default = default.value
    if default is None or isinstance(default, str | int | float | bool):
        return default
    return _NO_DEFAULT


def _without(schema: JSON, key: str) -> JSON:
    return {k: v for k, v in schema.items() if k != key}


def _name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or repr(hint)
