"""YAML config files read into pydantic models, with one error line per bad file.

`load_yaml_model(path, Model)` reads a YAML file and validates it with `Model` (a
`ConfigModel`: unknown keys are errors). Whatever is wrong, a YAML syntax error, a duplicate
key, a typo'd key, a wrong type or a missing key, comes out as ONE `ConfigError` line naming
the file, the key path and what was expected:

    config/alert_routing.yml: rules[2].chanels: unknown key (expected one of: name, channels, ...)
    config/cohorts.yml: line 4, column 9: not valid YAML (mapping values are not allowed here)

List indexes count from 0. `ConfigError` is a ValueError, so callers that already report a
ValueError as one line (the CLI) show it unchanged.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A config file (or document) that cannot be used, as one line: `source: where: what`."""

    def __init__(self, source: str, message: str, where: str | None = None):
        self.source, self.where, self.problem = source, where, message
        super().__init__(f"{source}: {where}: {message}" if where else f"{source}: {message}")


class ConfigModel(BaseModel):
    """Base of the config file models: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def display_path(path: Path) -> str:
    """The path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, except that a key given twice in one mapping is an error: plain YAML keeps
    the last one silently, so a second `rules:` would drop the first list unnoticed."""

    def construct_mapping(self, node, deep=False):
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path | str) -> Any:
    """The parsed document (None for an empty file); a syntax error or duplicate key raises
    ConfigError with the file, line and column."""
    path = Path(path)
    source = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, f"cannot read it ({exc})") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(source, f"not valid YAML ({problem})", where) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, f"not valid YAML ({str(exc).splitlines()[0]})") from None


def load_yaml_model(path: Path | str, model: type[ModelT]) -> ModelT:
    """Read `path` and validate it as `model` (an empty file is an empty mapping)."""
    data = read_yaml(path)
    return validate_model({} if data is None else data, model, display_path(Path(path)))


def validate_model(data: Any, model: type[ModelT], source: str) -> ModelT:
    """`model.model_validate(data)`, a ValidationError turned into one ConfigError line."""
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise config_error_from(exc, model, source) from None


def config_error_from(exc: pydantic.ValidationError, model: type[BaseModel],
                      source: str) -> ConfigError:
    """One line for all of a ValidationError's errors: unknown keys first (a typo'd key also
    makes the key it was meant to be missing; the typo is the news), then the others."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    parts = []
    for error in errors:
        parts.append((format_loc(_clean_loc(model, error["loc"])), _describe(error, model)))
    (where, first), rest = parts[0], parts[1:]
    if rest:
        shown = "; ".join(f"{w or 'top level'}: {m}" for w, m in rest[:2])
        more = f" and {len(rest) - 2} more" if len(rest) > 2 else ""
        first = f"{first} (also {shown}{more})"
    return ConfigError(source, first, where or "top level")


def format_loc(loc: Iterable[Any]) -> str:
    """('rules', 2, 'channels') -> 'rules[2].channels'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


# --- where an error is: walking the model's annotations along the error's location ------------


def _unwrap(annotation: Any) -> Any:
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return annotation


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(_unwrap(a) for a in typing.get_args(annotation) if a is not type(None))
    return (annotation,)


def _tag_of(member: Any) -> str | None:
    """The literal `type` of a member of a discriminated union (channel specs)."""
    if isinstance(member, type) and issubclass(member, BaseModel):
        field = member.model_fields.get("type")
        if field is not None and typing.get_origin(field.annotation) is typing.Literal:
            return str(typing.get_args(field.annotation)[0])
    return None


def _walk(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any]:
    """(the location without pydantic's union-member steps, the annotation it ends at)."""
    node: Any = model
    kept: list[Any] = []
    steps = list(loc)
    while steps:
        members = _union_members(_unwrap(node))
        if len(members) > 1:  # a discriminated union puts the member's tag in the location
            tagged = {_tag_of(m): m for m in members}
            if steps[0] in tagged:
                node = tagged[steps.pop(0)]
                continue
            return (*kept, *steps), None
        node = members[0]
        step = steps.pop(0)
        kept.append(step)
        origin = typing.get_origin(node)
        if isinstance(node, type) and issubclass(node, BaseModel):
            field = next((f for name, f in node.model_fields.items()
                          if step in (name, f.alias)), None)
            node = field.annotation if field is not None else None
        elif origin in (dict, Mapping, typing.Mapping):
            node = typing.get_args(node)[1]
        elif origin in (list, tuple, frozenset, set):
            node = typing.get_args(node)[0]
        else:
            node = None
        if node is None:
            return (*kept, *steps), None
    return tuple(kept), node


def _clean_loc(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[Any, ...]:
    return _walk(model, loc)[0]


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    node = _walk(model, loc)[1] if loc else model
    members = [m for m in _union_members(_unwrap(node)) if isinstance(m, type)
               and issubclass(m, BaseModel)] if node is not None else []
    return members[0] if len(members) == 1 else None


def _keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


# --- what was expected --------------------------------------------------------------------------

_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "frozen_set_type": "a list",
    "dict_type": "a mapping of keys to values",
    "model_type": "a mapping of keys to values",
    "model_attributes_type": "a mapping of keys to values",
    "date_type": "a date like 2026-12-01",
    "date_parsing": "a date like 2026-12-01",
    "date_from_datetime_parsing": "a date like 2026-12-01",
    "datetime_type": "a date-time like 2026-12-01T09:00:00",
    "datetime_parsing": "a date-time like 2026-12-01T09:00:00",
    "datetime_from_date_parsing": "a date-time like 2026-12-01T09:00:00",
    "time_type": "a time like '22:00'",
    "time_parsing": "a time like '22:00'",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
           "less_than_equal": "<="}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(error: Mapping[str, Any], model: type[BaseModel]) -> str:
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind == "extra_forbidden":
        # The raw location: it still holds the union member's tag that picks the model.
        parent = _model_at(model, tuple(error["loc"][:-1]))
        keys = f" (expected one of: {', '.join(_keys(parent))})" if parent else ""
        return f"unknown key{keys}"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return (f"unknown {ctx['discriminator']} {ctx['tag']!r} "
                f"(expected one of: {ctx['expected_tags']})")
    if kind == "union_tag_not_found":
        return f"missing {ctx['discriminator']} (which kind it is)"
    if kind == "literal_error":
        return f"expected one of {ctx['expected']}, got {_shown(value)}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"expected a number {_BOUNDS[kind]} {bound}, got {_shown(value)}"
    if kind in ("too_short", "too_long"):
        return f"{error['msg'].lower()}, got {_shown(value)}"
    if kind == "string_type" and isinstance(value, bool):
        return (f"expected a string, got {value} (YAML reads unquoted yes/no/on/off as "
                "true/false: quote the value)")
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {_shown(value)}"
    if kind in ("value_error", "assertion_error"):
        # Our own validators' messages say what is wrong and what was expected.
        return str(ctx.get("error") or error["msg"])
    message = error["msg"]
    return f"{message[:1].lower()}{message[1:]}, got {_shown(value)}"
