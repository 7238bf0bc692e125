"""Reading a `job submit-batch` file: JSONL (one item a line), a JSON list, or a YAML list.

The file is a tenant-supplied document, so it is parsed defensively: a size cap, a cap on its
items (`LORAFLEET_MAX_BATCH_ITEMS`: each item is validated against the registry before anything is
written), JSON through `safe_json` (no NaN, no duplicate keys, bounded nesting and numbers), and
YAML held to the same rules, checked on its parse events before anything is built: no aliases (a
452-byte "billion laughs" of nested aliases expands to gigabytes; refusing aliases outright costs
real batch files nothing), nesting at most `safe_json.MAX_DEPTH` deep, no key twice in a mapping
(YAML's "last one wins" would let a reviewer read one `tenant` and the system use another).
Error messages name the line and the reason, never the file's content.
"""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_engine.errors import LoraFleetInputError
from lora_engine.safe_json import MAX_DEPTH, MAX_NUMBER_CHARS, DocumentError, loads
from orchestrator.refs import spelled_as_id

if TYPE_CHECKING:
    from orchestrator.config import Settings

SUFFIXES = ".jsonl, .json, .yaml, .yml"


class BatchFileError(LoraFleetInputError):
    """A batch file that cannot be read as a list of items."""


def _json(text: str, where: str) -> Any:
    try:
        return loads(text, what=where)
    except DocumentError as exc:
        raise BatchFileError(str(exc)) from None


_TOO_DEEP = f"nests deeper than {MAX_DEPTH} levels of mappings and lists; at most {MAX_DEPTH} are allowed"


def _too_many(path: Path, count: str, max_items: int) -> BatchFileError:
    return BatchFileError(f"{path}: {count} items; a batch file may hold at most {max_items} "
                          "(LORAFLEET_MAX_BATCH_ITEMS): split it into several files")


def _check_yaml_events(text: str, path: Path, loader: type, max_items: int) -> None:
    """Refuse aliases, nesting deeper than MAX_DEPTH and more than `max_items` items of a
    top-level list, from the parse events alone (building the objects would recurse per level
    and expand every alias); stops at the first problem."""
    import yaml

    depth = items = 0
    top_is_list = False
    for event in yaml.parse(text, Loader=loader):
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, yaml.AliasEvent):
            raise BatchFileError(f"{path}: line {line}: YAML aliases (*name) are not allowed in batch files; "
                                 "write each item out in full")
        starts = isinstance(event, yaml.CollectionStartEvent)
        if depth == 1 and top_is_list and (starts or isinstance(event, yaml.ScalarEvent)):
            items += 1
            if items > max_items:
                raise _too_many(path, f"more than {max_items}", max_items)
        if starts:
            top_is_list = top_is_list or (depth == 0 and isinstance(event, yaml.SequenceStartEvent))
            depth += 1
            if depth > MAX_DEPTH:
                raise BatchFileError(f"{path}: line {line}: {_TOO_DEEP}")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _strict_loader(base: type, path: Path) -> type:
    """`base` (a safe loader) that refuses a key given twice in one mapping and integers longer
    than MAX_NUMBER_CHARS (Python will not convert past 4300 digits), naming `path` and the line."""

    class StrictLoader(base):  # type: ignore[misc, valid-type]
        def construct_mapping(self, node: Any, deep: bool = False) -> dict:
            self.flatten_mapping(node)
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, Hashable):
                    continue  # the base refuses it, with its line
                if key in seen:
                    line = key_node.start_mark.line + 1
                    raise BatchFileError(f"{path}: line {line}: key {str(key)[:80]!r} appears twice in one "
                                         "mapping; give each key once")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

        def construct_yaml_int(self, node: Any) -> int:
            if len(str(node.value)) > MAX_NUMBER_CHARS:
                line = node.start_mark.line + 1
                raise BatchFileError(f"{path}: line {line}: a number of {len(node.value)} characters; "
                                     f"numbers have at most {MAX_NUMBER_CHARS}")
            return super().construct_yaml_int(node)

    StrictLoader.add_constructor("tag:yaml.org,2002:int", StrictLoader.construct_yaml_int)
    return StrictLoader


def _yaml(text: str, path: Path, max_items: int) -> Any:
    import yaml

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        _check_yaml_events(text, path, base, max_items)
        return yaml.load(text, Loader=_strict_loader(base, path))  # aliases and depth refused above
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "not valid YAML"
        if "nesting depth" in problem:  # libyaml's own cap (1000), met while scanning ahead
            problem = _TOO_DEEP
        raise BatchFileError(f"{path}: {where}{problem}") from None


def _jsonl(text: str, path: Path, max_items: int) -> list[Any]:
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if len(lines) > max_items:  # counted before any line is parsed
        raise _too_many(path, str(len(lines)), max_items)
    return [_json(line, f"{path}: line {n}") for n, line in lines]


def load_batch_file(path: Path, settings: Settings | None = None, max_items: int | None = None) -> list[Any]:
    """The items of a batch file; a relative `dataset` path is made relative to the file's
    folder (not to the current directory). The file is read through the one path resolver
    (`orchestrator.paths`: inside a data root, a regular file, at most `max_batch_file_bytes`).
    BatchFileError when unreadable or when it holds more than `max_items` items (default: the
    `max_batch_items` setting), PathRefused when refused."""
    from orchestrator import paths
    from orchestrator.config import get_settings

    settings = settings or get_settings()
    max_items = settings.max_batch_items if max_items is None else max_items
    resolved, content = paths.read_file(path, settings, "batch file", cap=settings.max_batch_file_bytes,
                                        cap_var="LORAFLEET_MAX_BATCH_FILE_BYTES")
    path = Path(path)
    try:
        text = content.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        raise BatchFileError(f"{path}: not valid UTF-8 (byte offset {exc.start}); save it as UTF-8") from None
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        items = _yaml(text, path, max_items)
    elif suffix == ".json":
        items = _json(text, str(path))
    elif suffix in (".jsonl", ".ndjson", ""):
        items = _jsonl(text, path, max_items)
    else:
        raise BatchFileError(f"{path}: unknown batch file type {suffix[:20]!r}; allowed: {SUFFIXES}")
    if not isinstance(items, list):
        raise BatchFileError(f"{path}: expected a list of job items, got {type(items).__name__}")
    if len(items) > max_items:
        raise _too_many(path, str(len(items)), max_items)
    for item in items:
        spec = item.get("spec") if isinstance(item, dict) and isinstance(item.get("spec"), dict) else item
        if isinstance(spec, dict):
            value = spec.get("dataset")
            if isinstance(value, str) and value and not spelled_as_id(value):
                spec["dataset"] = str(resolved.parent / value)  # confined again when submitted
    return items
