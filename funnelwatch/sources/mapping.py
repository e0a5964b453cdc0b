"""A source mapping: how one feed's rows become contract events (`config/sources/<name>.yml`).

    name: segment                 # the producer name of the landing files
    format: jsonl                 # jsonl | csv | tsv | parquet
    columns: [...]                # headerless csv/tsv only: the column names, in order
    timezone: UTC                 # naive timestamps are in this zone (converted to UTC)
    event_name: [event, type]     # the feed field(s) naming the event; first non-empty wins
    fields:                       # contract field -> feed field(s), dotted paths into JSON
      event_time: timestamp
      user_id: [anonymousId, userId]
      country: {from: context.locale, extract: '[-_]([A-Za-z]{2})$'}
      utm_campaign: context.campaign.name?      # '?': the feed may lack it entirely
    events:                       # feed event name -> contract event type
      Product Viewed: product_view
      Payment Info Entered: {type: checkout_step, set: {checkout_step: payment}}
    values:                       # per descriptive field: feed value -> contract value
      page_type: {pdp: product}
    drop: [Products Searched]     # event names that are not funnel steps: skipped, counted

Everything is checked when the file is loaded (`load_mapping`): an unknown contract field, an
event type or a value-map target the contract does not have, or a bad timezone is ONE
ConfigError line naming the file and the key. Fields the feed lacks are checked against the
feed itself, by `funnelwatch.sources.apply`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pydantic
from pydantic import BeforeValidator, Field, field_validator, model_validator

from funnelwatch.config_files import ConfigModel, load_yaml_model
from funnelwatch.contract import (
    CHECKOUT_STEPS,
    DEVICE_TYPES,
    EVENT_FIELDS,
    EVENT_TYPES,
    PAGE_TYPES,
    PAYMENT_STATUSES,
)

# The shipped mappings (also the known event names check-source proposes from).
SOURCES_DIR = Path(__file__).resolve().parents[2] / "config" / "sources"
FORMATS = ("jsonl", "csv", "tsv", "parquet")
# A path's last character '?' marks it optional: a feed without it is not an error.
OPTIONAL_MARK = "?"

EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
_TEXT_FIELDS = tuple(f.name for f in EVENT_FIELDS if f.duckdb_type == "VARCHAR")


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Paths = Annotated[list[Annotated[str, Field(min_length=1)]], BeforeValidator(_as_list),
                  Field(min_length=1)]


class FieldSource(ConfigModel):
    """Where a contract field comes from: the first non-empty of `from` (feed paths), with an
    optional regular expression whose first group is kept (`extract`)."""

    from_: Paths = Field(alias="from")
    extract: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, (str, list)):
            return {"from": value}
        return value

    @field_validator("extract")
    @classmethod
    def _one_group(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            groups = re.compile(value).groups
        except re.error as exc:
            raise ValueError(f"not a valid regular expression ({exc})") from None
        if groups < 1:
            raise ValueError("the regular expression needs a (group): its first group is kept")
        return value

    @property
    def paths(self) -> list[str]:
        return list(self.from_)


Fields = pydantic.create_model(
    "Fields",
    __base__=ConfigModel,
    **{f.name: (FieldSource | None, None) for f in EVENT_FIELDS if f.name != "event_type"},
)


class SetValues(ConfigModel):
    """Constant values an event sets (they win over the mapped field)."""

    checkout_step: Literal[CHECKOUT_STEPS] | None = None  # type: ignore[valid-type]
    payment_status: Literal[PAYMENT_STATUSES] | None = None  # type: ignore[valid-type]
    page_type: Literal[PAGE_TYPES] | None = None  # type: ignore[valid-type]
    currency: str | None = None
    payment_provider: str | None = None
    error_code: str | None = None


class EventTarget(ConfigModel):
    type: EventType
    set: SetValues = SetValues()

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value


class ValueMaps(ConfigModel):
    """Per descriptive field, feed value -> contract value. Feed values are compared
    case- and space-insensitively, like ingest compares the contract's own values."""

    page_type: dict[str, Literal[PAGE_TYPES]] = Field(default_factory=dict)  # type: ignore[valid-type]
    checkout_step: dict[str, Literal[CHECKOUT_STEPS]] = Field(default_factory=dict)  # type: ignore[valid-type]
    device_type: dict[str, Literal[DEVICE_TYPES]] = Field(default_factory=dict)  # type: ignore[valid-type]
    payment_status: dict[str, Literal[PAYMENT_STATUSES]] = Field(default_factory=dict)  # type: ignore[valid-type]

    def items(self) -> list[tuple[str, dict[str, str]]]:
        return [(name, getattr(self, name)) for name in type(self).model_fields
                if getattr(self, name)]


class SourceMapping(ConfigModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    format: Literal[FORMATS]  # type: ignore[valid-type]
    columns: list[str] | None = None
    timezone: str = "UTC"
    event_name: Paths
    fields: Fields  # type: ignore[valid-type]
    events: dict[str, EventTarget] = Field(default_factory=dict)
    values: ValueMaps = ValueMaps()
    drop: list[str] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (expected an IANA name like "
                             "UTC or Europe/Berlin)") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SourceMapping:
        if self.fields.event_time is None:
            raise ValueError("fields.event_time is required (which feed field holds the time)")
        if self.columns is not None and self.format not in ("csv", "tsv"):
            raise ValueError("columns: only for headerless csv/tsv feeds")
        both = sorted(set(self.events) & set(self.drop))
        if both:
            raise ValueError(f"event name(s) {both} are both mapped (events) and dropped (drop)")
        return self

    def field_sources(self) -> dict[str, FieldSource]:
        """Contract field -> where it comes from, for the mapped fields."""
        return {name: source for name in type(self.fields).model_fields
                if (source := getattr(self.fields, name)) is not None}


def load_mapping(path: Path | str) -> SourceMapping:
    """The mapping in `path`; a bad file raises ConfigError (one line)."""
    return load_yaml_model(path, SourceMapping)


def strip_optional(path: str) -> tuple[str, bool]:
    """(the path without its optional mark, whether it is optional)."""
    if path.endswith(OPTIONAL_MARK):
        return path[: -len(OPTIONAL_MARK)], True
    return path, False


def split_path(path: str) -> list[str]:
    """'context.page.url' -> ['context', 'page', 'url']."""
    return path.split(".")
