"""JSON from outside (a tenant's data rows and adapter configs, batch files, safetensors headers,
the CLI server's requests), parsed with limits: every document that crosses a trust boundary goes
through `loads`.

Python's `json` accepts what a hostile author would send: `NaN`/`Infinity` (not JSON), `1e400`
(read as infinity), a key given twice (the last one silently wins, so a reviewer reads one value
and the code uses another), nesting deep enough to raise RecursionError (a traceback, or a dead
server) and integers of thousands of digits (a ValueError past 4300). Each is refused here with a
`DocumentError` that names the document, what was wrong and what is allowed.
Torch-free and dependency-free: the CLI and the worker both import it.
"""

from __future__ import annotations

import json
import math
import re
from itertools import accumulate
from typing import Any

from lora_engine.errors import LoraFleetInputError

# Deeper than any document lorafleet reads legitimately (a batch item with a spec is 3 levels,
# a chat row 4, a safetensors header 3), shallow enough that no recursive walk is at risk.
MAX_DEPTH = 32
# Longer than any number lorafleet reads (a 64-bit integer has 20 digits), far below the 4300
# digits past which Python refuses to convert.
MAX_NUMBER_CHARS = 100


class DocumentError(LoraFleetInputError):
    """A JSON document that is malformed or over a limit; the message says which and what is
    allowed. `reason` is the message without the document's name (and, for a syntax error,
    without "is not JSON"), for a caller that words the message itself."""

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


def _refuse_constant(name: str) -> Any:
    raise DocumentError(f"{name} is not a number JSON allows; numbers must be finite")


def _integer(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise DocumentError(f"a number of {len(text)} digits; numbers have at most {MAX_NUMBER_CHARS}")
    return int(text)


def _finite(text: str) -> float:
    value = float(text)
    if len(text) > MAX_NUMBER_CHARS or not math.isfinite(value):
        raise DocumentError(f"number {text[:24]}{'...' if len(text) > 24 else ''} is out of range; numbers "
                            f"must be finite and at most {MAX_NUMBER_CHARS} characters")
    return value


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DocumentError(f"key {key[:80]!r} appears twice in one object; give each key once")
        out[key] = value
    return out


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DELTA = {"[": 1, "{": 1, "]": -1, "}": -1}


def _bracket_depth(text: str) -> int:
    """The deepest nesting of `[`/`{` outside strings, counted without recursion (a string's
    brackets and escaped quotes do not count); regular expressions and `accumulate` keep the
    loop in C, so a 16 MB document is counted in a fraction of its parse time."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    return max(accumulate(map(_DELTA.__getitem__, brackets)), default=0)


def loads(text: str | bytes, *, what: str, max_depth: int = MAX_DEPTH) -> Any:
    """The value of the JSON document `text`, or DocumentError naming `what` and the problem:
    not JSON (with line and column), a non-finite number, a duplicate key, or nesting deeper
    than `max_depth`."""
    if isinstance(text, bytes | bytearray):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = f"is not UTF-8 text (byte offset {exc.start})"
            raise DocumentError(f"{what} {reason}", reason) from None
    # Counting brackets is linear and cheap next to parsing; most documents are far shallower
    # than the cap, so the count is taken only when a quick look says it could matter.
    if text.count("[") + text.count("{") > max_depth and _bracket_depth(text) > max_depth:
        reason = f"nests deeper than {max_depth} levels of objects and lists; at most {max_depth} are allowed"
        raise DocumentError(f"{what} {reason}", reason)
    try:
        return json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_no_duplicate_keys,
                          parse_int=_integer, parse_float=_finite)
    except DocumentError as exc:
        raise DocumentError(f"{what}: {exc}", str(exc)) from None
    except json.JSONDecodeError as exc:
        reason = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise DocumentError(f"{what} is not JSON: {reason}", reason) from None
    except RecursionError:  # defensive: the depth check above should have refused it first
        reason = f"nests too deeply; at most {max_depth} levels are allowed"
        raise DocumentError(f"{what} {reason}", reason) from None
