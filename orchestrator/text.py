"""Strings from outside, made safe for the place they are shown: a terminal, a CSV cell, a URL.

Names, labels, file and folder names, error and event messages may come from a tenant (or from a
row an older version let in), and the registry keeps them as they were given. They are escaped
where they are shown, never trusted to be clean:

- `printable(text)` for every string that reaches a person's terminal (and the formats people
  read: the terminal tables, Markdown, HTML and chart labels). A character a terminal would act
  on instead of show is written as an escape: C0 controls and DEL (`\\x1b`, `\\x07`; `\\n`, `\\r`,
  `\\t`), C1 controls (`\\x9b`, a one-byte CSI), Unicode format characters such as the bidi
  overrides and isolates (`\\u202e`, "Trojan Source") and zero-width spaces, line and paragraph
  separators, and lone surrogates (an undecodable byte of a file name). So an OSC title, a
  clear-screen, an OSC 52 clipboard write or a right-to-left override arrives as visible text.
  Zero-width (non-)joiners stay: scripts and emoji need them and a terminal only draws them.
  The backslash itself is not doubled: the text stays readable, and an escape it seems to
  contain is inert either way.
- `csv_cell(value)` for every CSV cell (formula injection, see there).
- `redact_url(text)` for settings and messages that may hold a URL with a password.

Data formats keep the value exact (JSON escapes by itself; CSV only neutralises formulas); the
formats people read go through `printable`. Standard library only: the CLI imports this at start.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

# Unicode categories a terminal does not simply draw: controls, format characters, lone
# surrogates, and the line/paragraph separators.
_UNPRINTABLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_KEPT = frozenset({"\u200c", "\u200d"})  # ZWNJ, ZWJ: needed by Indic/Persian scripts and emoji
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _unprintable(char: str) -> bool:
    return char not in _KEPT and unicodedata.category(char) in _UNPRINTABLE_CATEGORIES


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(value: Any, *, multiline: bool = False) -> str:
    """`value` as text that a terminal shows rather than obeys: every unprintable character (see
    the module docstring) written as a Python-style escape (`\\x1b`, `\\u202e`).

    multiline=True keeps line feeds and tabs (our own multi-line messages: a spec's list of
    problems); a carriage return is always escaped (it would let a line overwrite itself).
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text  # the common case: nothing to look at character by character
    return "".join(
        c if (multiline and c in "\n\t") or not _unprintable(c) else _escape(c) for c in text
    )


# ---- CSV ----------------------------------------------------------------------------------------

# A spreadsheet reads a cell that starts with one of these as a formula (`=HYPERLINK(...)`,
# `@SUM(...)`, `+cmd|...`, `-2+3`), and tab or CR before them still does (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> str:
    """One CSV cell, safe to open in a spreadsheet.

    The rule is by type, not by look: numbers (int and float, not bool) are numbers and written
    exactly (`repr` for floats, so `-0.5` stays the number -0.5 and a value round-trips); None is
    an empty cell; every other value is text, and text that starts with = + - @ tab or CR gets a
    leading apostrophe (`'=HYPERLINK(...)`), which spreadsheets show as the text itself. So a
    negative metric is never altered and a name can never become a formula.
    """
    if value is None:
        return ""
    if isinstance(value, int):  # bool included: True / False
        return str(value)
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


# ---- URLs ---------------------------------------------------------------------------------------

MASK = "***"
# A URL runs to whitespace or ';' (Celery's separator of fail-over brokers).
_URL = re.compile(r"\b(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<rest>[^\s;]+)")
# ...?password=SECRET&... (libpq and several brokers accept the password as a parameter too).
_QUERY_SECRET = re.compile(r"(?P<head>[?&](?:password|passwd|pwd|secret|token|access_key|sas_token)=)"
                           r"[^&#]+", re.IGNORECASE)


def _masked(match: re.Match[str]) -> str:
    rest = match["rest"]
    # user:password@host: the password runs to the last '@' (an unencoded '@' in it is read that
    # way by urllib, so by redis and kombu); a "user" with a '/' is a path (sqlite:////a:b@c).
    at = rest.rfind("@")
    if at > 0:
        user, colon, password = rest[:at].partition(":")
        if colon and password and "/" not in user:
            rest = f"{user}:{MASK}{rest[at:]}"
    return match["scheme"] + _QUERY_SECRET.sub(lambda m: m["head"] + MASK, rest)


def redact_url(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***` (scheme, user, host, port,
    database and the other parameters shown): `postgresql://app:***@db:5432/lorafleet`."""
    return _URL.sub(_masked, text)
