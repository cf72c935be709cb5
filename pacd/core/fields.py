"""Path-aware reading of untrusted JSON/TOML documents.

Every problem is recorded as ``"<path>: <message>"`` (``agents[1].isolation: ...``)
and reading continues, so one pass reports *every* mistake in a document
instead of making the owner fix them one at a time. Readers return ``None``
for a value they could not read; the caller only builds models once the
collector is empty.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from enum import Enum
from typing import Any, Final, TypeVar

from pacd.errors import MAX_REASONS, SpecError

E = TypeVar("E", bound=Enum)
T = TypeVar("T")

#: sentinel for "no default: the field is required"
REQUIRED: Final = object()

# A DNS label (RFC 1123), lowercase. Agent, concern and container names become
# parts of Podman container names, host names and URL path segments, so they
# must be safe in all three without escaping.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")

# Container image references, after the grammar of distribution/reference
# (the one Podman and Docker use): [domain[:port]/]path[:tag][@digest].
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IMAGE = re.compile(rf"(?P<name>{_NAME})(?::{_TAG})?(?:@{_DIGEST})?")
_IMAGE_NAME_MAX = 255


def is_label(value: str) -> bool:
    """A lowercase DNS label: 1-63 of ``a-z0-9-``, not starting or ending with ``-``."""
    return _LABEL.fullmatch(value) is not None


def is_hostname(value: str) -> bool:
    """A lowercase RFC 1123 host name (no wildcard, no trailing dot)."""
    if not value or len(value) > 253:
        return False
    return all(_HOST_LABEL.fullmatch(part) for part in value.split("."))


def is_image_reference(value: str) -> bool:
    match = _IMAGE.fullmatch(value)
    return match is not None and len(match.group("name")) <= _IMAGE_NAME_MAX


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be shown to the owner as it is, or None.

    A lone surrogate (``"\\ud800"``, legal in JSON's ``\\u`` escapes) is not
    Unicode text: it cannot be encoded, hashed or signed. Control characters
    (category Cc) and format characters (Cf: bidi overrides such as U+202E,
    zero-width spaces and joiners) can make a name look like another one in a
    prompt the owner approves from, so names refuse them all.
    """
    if value.isascii():
        # the usual case; ASCII's only Cc are C0 and DEL
        if value.isprintable():
            return None
        bad = next(ch for ch in value if not ch.isprintable())
        return f"contains the control character U+{ord(bad):04X}"
    for ch in value:
        category = unicodedata.category(ch)
        if category == "Cs":
            return f"contains a lone surrogate U+{ord(ch):04X}, which is not Unicode text"
        if category in ("Cc", "Cf"):
            kind = "control" if category == "Cc" else "format (invisible or bidi)"
            name = unicodedata.name(ch, "")
            return f"contains the {kind} character U+{ord(ch):04X}" + (
                f" ({name})" if name else "")
    return None


def first_surrogate(value: Any, path: str, depth: int = 0) -> str | None:
    """The path of the first string (member name or value) in decoded JSON that holds
    a lone surrogate, or None. Such a string cannot be encoded as UTF-8, so no part
    of pacd that hashes, signs or stores it could take it."""
    if isinstance(value, str):
        return None if _encodes(value) else path
    if depth > 200:  # deeper than any parser accepts: it will be refused there
        return None
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = join(path, str(key))  # join escapes an odd key (json.dumps: ASCII)
            if not _encodes(str(key)):
                return where
            found = first_surrogate(item, where, depth + 1)
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = first_surrogate(item, index(path, i), depth + 1)
            if found is not None:
                return found
    return None


def refuse_surrogates(value: Any, path: str) -> None:
    """Raise SpecError (invalid_request) naming the first string with a lone surrogate."""
    where = first_surrogate(value, path)
    if where is not None:
        message = f"{where}: contains a lone surrogate, which is not Unicode text"
        raise SpecError(message, errors=[message])


def _encodes(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_type(value: Any) -> str:
    """The JSON name of a value's type, for messages."""
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
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def show(value: Any, limit: int = 60) -> str:
    """A value quoted for a message, cut short so hostile input cannot flood logs."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def join(path: str, key: str) -> str:
    """``path.key``, or ``path["odd key"]`` when the key is not a plain identifier."""
    if _IDENT.fullmatch(key):
        return f"{path}.{key}" if path else key
    shown = key if len(key) <= 40 else key[:37] + "..."
    return f"{path}[{json.dumps(shown)}]"


def index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def one_of(values: Iterable[str]) -> str:
    return ", ".join(values)


class Problems:
    """Collects path-prefixed problems; ``root`` names the document itself.

    Every problem is counted (``count``), but only the first
    :data:`~pacd.errors.MAX_REASONS` are kept: a hostile document may have
    any number of mistakes, and neither memory nor the answer grows with them.
    """

    def __init__(self, root: str) -> None:
        self.root = root
        self.errors: list[str] = []
        self.count = 0

    def add(self, path: str, message: str) -> None:
        self.count += 1
        if len(self.errors) >= MAX_REASONS:
            return
        # a path that starts with a subscript hangs off the document itself
        where = self.root + path if path.startswith("[") else path or self.root
        self.errors.append(f"{where}: {message}")

    def extend(self, messages: list[str]) -> None:
        """Problems already prefixed with their path."""
        self.count += len(messages)
        self.errors.extend(messages[: max(0, MAX_REASONS - len(self.errors))])

    def __bool__(self) -> bool:
        return self.count > 0

    def raise_if_any(self, what: str) -> None:
        if self.count:
            noun = "problem" if self.count == 1 else "problems"
            raise SpecError(
                f"{what} is invalid ({self.count} {noun}): {self.errors[0]}",
                errors=self.errors, omitted=self.count - len(self.errors),
            )


def camel_case(name: str) -> str:
    """``requires_auth`` -> ``requiresAuth``: the spelling Swift's Codable writes."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def spellings(fields: Sequence[str], seed: Mapping[str, str] | None = None) -> dict[str, str]:
    """The second accepted spelling of each field: canonical snake_case -> camelCase.

    The camelCase name is derived, except where the seed names the field
    differently (``seed``, e.g. ``data_access`` -> ``dataAccessLevel``). Fields
    that are one word (``name``) have only one spelling. pacd itself always
    writes the canonical name.
    """
    seed = seed or {}
    table = {name: seed.get(name, camel_case(name)) for name in fields}
    return {name: alias for name, alias in table.items() if alias != name}


@dataclass(frozen=True)
class Shape:
    """The field spellings of one kind of object and of the objects nested in it
    (keyed by canonical field name; an array field's shape is its items')."""

    aliases: Mapping[str, str]
    children: Mapping[str, Shape] = dc_field(default_factory=dict)


_SEGMENT = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_]*)|\[([0-9]+)\]")


def as_written(message: str, data: Any, shape: Shape) -> str:
    """``message`` (``"<canonical path>: ..."``) with its path spelled as ``data`` spells it.

    Checks that run on a parsed model name fields canonically; the owner
    should see the names of the document they wrote. Paths outside ``shape``
    stay as they are.
    """
    path, sep, rest = message.partition(": ")
    if not sep:
        return message
    out: list[str] = []
    node: Any = data
    current: Shape | None = shape
    pos = 0
    while pos < len(path):
        match = _SEGMENT.match(path, pos)
        if match is None:
            return message
        pos = match.end()
        name, number = match.group(1), match.group(2)
        if number is not None:
            out.append(f"[{number}]")
            i = int(number)
            node = node[i] if isinstance(node, list) and i < len(node) else None
            continue
        written = name
        if current is not None and name in current.aliases and isinstance(node, Mapping):
            alias = current.aliases[name]
            camel = any(other in node for other in current.aliases.values())
            if alias in node or (name not in node and camel):
                written = alias
        out.append(("." if out else "") + written)
        node = node.get(written) if isinstance(node, Mapping) else None
        current = current.children.get(name) if current is not None else None
    return "".join(out) + sep + rest


class Obj:
    """Reads one JSON object: refuses unknown fields, reports missing required ones.

    ``aliases`` (canonical -> other spelling, from ``spellings``) lets a field
    be written either way; writing both spellings of one field is a problem
    naming both. Reads use the canonical name; paths in messages use the
    spelling the document used (for a missing field: camelCase when the object
    uses any camelCase name).
    """

    def __init__(
        self,
        data: Any,
        path: str,
        problems: Problems,
        fields: Sequence[str],
        required: Sequence[str] = (),
        *,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.path = path
        self.problems = problems
        self.ok = isinstance(data, Mapping)
        self.aliases: Mapping[str, str] = aliases or {}
        #: canonical name -> the name the document used, for fields written the other way
        self.written: dict[str, str] = {}
        if not self.ok:
            self.data: Mapping[Any, Any] = {}
            problems.add(path, f"expected an object, got {json_type(data)}")
            return
        canonical = {alias: name for name, alias in self.aliases.items()}
        if not canonical:
            self.data = data
        else:
            normal: dict[Any, Any] = {}
            for key, value in data.items():
                name = canonical.get(key, key) if isinstance(key, str) else key
                if name != key:
                    if name in data:
                        problems.add(join(path, key), f"{name!r} and {key!r} are two spellings "
                                     "of one field; write only one of them")
                        continue
                    self.written[name] = key
                normal[name] = value
            self.data = normal
        self.camel = bool(self.written)
        for key in data:
            name = canonical.get(key, key) if isinstance(key, str) else key
            if not isinstance(name, str) or name not in fields:
                expected = one_of(self._spell(k) for k in fields)
                problems.add(join(path, str(key)), f"unknown field (expected one of {expected})")
        for key in required:
            if key not in self.data:
                problems.add(self.at(key), "is required")

    def _spell(self, key: str) -> str:
        if key in self.written:
            return self.written[key]
        if self.camel and key in self.aliases and key not in self.data:
            return self.aliases[key]
        return key

    def at(self, key: str) -> str:
        """The path of field ``key`` (canonical name), spelled as the document spells it."""
        return join(self.path, self._spell(key))

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def string(
        self,
        key: str,
        default: Any = REQUIRED,
        *,
        check: Callable[[str], bool] | None = None,
        expect: str = "",
        max_len: int = 256,
    ) -> str | None:
        if key not in self.data:
            return None if default is REQUIRED else default
        return read_string(
            self.data[key], self.at(key), self.problems, check=check, expect=expect, max_len=max_len
        )

    def boolean(self, key: str, default: bool | None = None) -> bool | None:
        if key not in self.data:
            return default
        value = self.data[key]
        if not isinstance(value, bool):
            self.problems.add(self.at(key), f"expected a boolean, got {json_type(value)}")
            return None
        return value

    def integer(self, key: str, default: int | None = None) -> int | None:
        if key not in self.data:
            return default
        return read_int(self.data[key], self.at(key), self.problems)

    def enum(self, key: str, enum: type[E], default: E | None = None) -> E | None:
        if key not in self.data:
            return default
        return read_enum(self.data[key], self.at(key), self.problems, enum)

    def array(self, key: str, default: list[Any] | None = None,
              max_items: int | None = None) -> list[tuple[str, Any]] | None:
        """The items of an array field, each paired with its path (see :func:`read_array`)."""
        if key not in self.data:
            if default is None:
                return None
            return [(index(self.at(key), i), v) for i, v in enumerate(default)]
        return read_array(self.data[key], self.at(key), self.problems, max_items)


def read_string(
    value: Any,
    path: str,
    problems: Problems,
    *,
    check: Callable[[str], bool] | None = None,
    expect: str = "",
    max_len: int = 256,
) -> str | None:
    if not isinstance(value, str):
        problems.add(path, f"expected a string, got {json_type(value)}")
        return None
    if not value:
        problems.add(path, "must not be empty")
        return None
    if len(value) > max_len:
        problems.add(path, f"is too long ({len(value)} characters, at most {max_len})")
        return None
    problem = text_problem(value)
    if problem is not None:
        problems.add(path, problem)
        return None
    if check is not None and not check(value):
        problems.add(path, f"{show(value)} is not {expect}")
        return None
    return value


def read_int(value: Any, path: str, problems: Problems) -> int | None:
    # bool is an int in Python but never an integer in a document
    if isinstance(value, bool) or not isinstance(value, int):
        problems.add(path, f"expected an integer, got {json_type(value)}")
        return None
    return value


def read_enum(value: Any, path: str, problems: Problems, enum: type[E]) -> E | None:
    names = [member.value for member in enum]
    if not isinstance(value, str):
        problems.add(path, f"expected a string (one of {one_of(names)}), got {json_type(value)}")
        return None
    if value not in names:
        problems.add(path, f"{show(value)} is not one of {one_of(names)}")
        return None
    return enum(value)


def read_array(value: Any, path: str, problems: Problems,
               max_items: int | None = None) -> list[tuple[str, Any]] | None:
    """The items, each paired with its path; beyond ``max_items`` one problem, and
    only the first ``max_items`` are read (work does not grow with hostile input)."""
    if not isinstance(value, list | tuple):
        problems.add(path, f"expected an array, got {json_type(value)}")
        return None
    if max_items is not None and len(value) > max_items:
        problems.add(path, f"has {len(value)} items, at most {max_items}")
        value = value[:max_items]
    return [(index(path, i), item) for i, item in enumerate(value)]


def read_unique(
    items: list[tuple[str, Any]] | None,
    problems: Problems,
    read: Callable[[Any, str], T | None],
    what: str,
) -> tuple[T, ...] | None:
    """Reads every item with ``read(value, path)``; duplicates are problems."""
    if items is None:
        return None
    out: list[T] = []
    failed = False
    for path, raw in items:
        value = read(raw, path)
        if value is None:
            failed = True
        elif value in out:
            problems.add(path, f"duplicate {what} {show(getattr(value, 'value', value))}")
            failed = True
        else:
            out.append(value)
    return None if failed else tuple(out)
