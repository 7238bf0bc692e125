"""OpenAI's chat format for a tenant's generation data: validation (torch-free) and rendering.

A row is ``{"messages": [{"role": "system" | "user" | "assistant", "content": str}, ...]}``,
as OpenAI's fine-tuning API takes it. It trains what a generation row trains, once rendered:

    prompt     = the base model's chat template applied to every message before the LAST
                 assistant message, with the generation prompt added (add_generation_prompt=True)
    completion = the last assistant message's content (the generation path appends eos)

The base model is known only when the job starts, so the upload stores the messages and the
worker renders them (`render_chat_dataset`, called by worker/inputs.py) with the tokenizer of the
model it trains, into a prompt/completion file the engine reads like any other.

A tokenizer without a chat template (GPT-2 and the tiny test models) gets `plain_prompt`, one
``<role>: <content>`` line per message, then ``"assistant: "`` (its trailing space included), e.g.
``"system: You answer in French.\nuser: Hello\nassistant: "``.

Earlier assistant messages are context (OpenAI's weight 0); only the last one is learnt. OpenAI's
optional per-message ``weight`` is accepted where it says exactly that (1 on the last assistant
message, 0 on earlier ones) and refused otherwise, since lorafleet cannot learn from two assistant
messages of one row. Everything else OpenAI's format may carry (``name``, ``tools``,
``tool_calls``, content parts) is refused by name: nothing a row says is silently ignored.

Bounds: a row's nesting is capped by `lora_engine.safe_json` (a chat row is 4 levels), its
messages by `MAX_MESSAGES`, the problems reported per row by `MAX_PROBLEMS_PER_ROW` (and per file
by `custom.MAX_PROBLEMS_KEPT`), so a hostile file cannot make a report of millions of lines.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
MESSAGE_KEYS = ("role", "content", "weight")
MAX_MESSAGES = 1024
MAX_PROBLEMS_PER_ROW = 5


def _type_name(value: Any) -> str:
    return "null" if value is None else {dict: "object", list: "array", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _message_problems(index: int, message: Any, last_assistant: int) -> list[str]:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        return [f"{where} must be an object with 'role' and 'content' (got {_type_name(message)})"]
    problems = []
    unknown = [k for k in message if k not in MESSAGE_KEYS]
    if unknown:
        problems.append(f"{where} has unknown key(s) {', '.join(repr(k[:40]) for k in unknown[:5])}; "
                        f"allowed: {', '.join(MESSAGE_KEYS)}")
    role = message.get("role")
    if role not in ROLES:
        shown = repr(role[:40]) if isinstance(role, str) else _type_name(role)
        problems.append(f"{where}.role is {shown}; allowed: {', '.join(ROLES)}")
    content = message.get("content")
    if not isinstance(content, str):
        problems.append(f"{where}.content must be a string (got {_type_name(content)})")
    elif not content.strip():
        problems.append(f"{where}.content is empty")
    if "weight" in message:
        weight = message["weight"]
        wanted = 1 if index == last_assistant else 0
        if role != "assistant":
            problems.append(f"{where}.weight is only allowed on assistant messages")
        elif isinstance(weight, bool) or weight not in (0, 1):
            problems.append(f"{where}.weight must be 0 or 1 (got {json.dumps(weight)[:40]})")
        elif weight != wanted:
            problems.append(f"{where}.weight is {weight}, but lorafleet learns the last assistant message "
                            f"only: its weight must be 1 and earlier assistant messages' 0 (or leave "
                            f"weight out)")
    return problems


def chat_row_problems(row: Any) -> list[str]:
    """Every reason (at most `MAX_PROBLEMS_PER_ROW`, then a count) a decoded chat row is invalid."""
    if not isinstance(row, dict):
        return [f"not a JSON object (got {_type_name(row)})"]
    problems = []
    unknown = [k for k in row if k != "messages"]
    if unknown:
        problems.append(f"unknown field(s) {', '.join(repr(k[:40]) for k in unknown[:5])}; a chat row "
                        f"holds only 'messages'")
    messages = row.get("messages")
    if not isinstance(messages, list):
        return [*problems, f"'messages' must be a list of messages (got {_type_name(messages)})"]
    if not messages:
        return [*problems, "'messages' is empty; a chat row needs at least one assistant message"]
    if len(messages) > MAX_MESSAGES:
        return [*problems, f"{len(messages)} messages; a row has at most {MAX_MESSAGES}"]
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    assistants = [i for i, role in enumerate(roles) if role == "assistant"]
    last_assistant = assistants[-1] if assistants else -1
    for index, message in enumerate(messages):
        problems.extend(_message_problems(index, message, last_assistant))
        if len(problems) > MAX_PROBLEMS_PER_ROW:
            break
    if not assistants:
        problems.append("no assistant message; a chat row ends with the assistant message to learn")
    elif last_assistant != len(messages) - 1:
        problems.append(f"the last message is the {roles[-1]!r} one; a chat row ends with the assistant "
                        f"message to learn")
    elif last_assistant == 0:
        problems.append("only an assistant message; a chat row needs the messages it answers before it")
    if len(problems) > MAX_PROBLEMS_PER_ROW:
        more = len(problems) - MAX_PROBLEMS_PER_ROW
        problems = [*problems[:MAX_PROBLEMS_PER_ROW], f"and {more}+ more problem(s) in this row"]
    return problems


def normalized(row: dict) -> dict:
    """A valid chat row as stored rows are read: role and content only (a weight is implied)."""
    return {"messages": [{"role": m["role"], "content": m["content"]} for m in row["messages"]]}


def plain_prompt(messages: Iterable[dict]) -> str:
    """The prompt for a tokenizer without a chat template: ``<role>: <content>`` lines, then
    ``"assistant: "``."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "


def render_row(row: dict, tokenizer) -> dict[str, str]:
    """{"prompt", "completion"} of a valid chat row with `tokenizer`'s chat template (see the
    module docstring); `plain_prompt` when the tokenizer has none."""
    messages = row["messages"]
    context = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(context, tokenize=False, add_generation_prompt=True)
    else:
        prompt = plain_prompt(context)
    return {"prompt": prompt, "completion": messages[-1]["content"]}


def _rendered_text(path: Path, tokenizer) -> str:
    from lora_engine.data.custom import read_jsonl
    from lora_engine.errors import DataValidationError

    parsed = read_jsonl(path, "generation")  # checked again: the engine trusts no file unchecked
    out = []
    for number, row in enumerate(parsed.rows, start=1):
        try:
            rendered = render_row(row, tokenizer) if parsed.format == "chat" else row
        except Exception as exc:  # a template's own rule (jinja's raise_exception: "no system role")
            why = f"the base model's chat template refuses chat row {number}: {str(exc)[:300]}"
            raise DataValidationError(str(path), [(0, why)]) from None
        out.append(json.dumps(rendered, ensure_ascii=False) + "\n")
    return "".join(out)


def _pair(data_file: Path) -> list[Path]:
    from lora_engine.data.custom import validation_sibling

    sibling = validation_sibling(data_file)
    return [data_file, sibling] if sibling.is_file() else [data_file]


def needs_rendering(data_file: str | Path) -> bool:
    """Whether a validated generation file (or its `.validation.jsonl` sibling) holds chat rows."""
    from lora_engine.data.custom import file_format

    return any(file_format(path) == "chat" for path in _pair(Path(data_file)))


def render_chat_dataset(data_file: str | Path, tokenizer) -> Path:
    """The prompt/completion file a stored chat data set trains as with `tokenizer`: its rows (and
    those of its `<name>.validation.jsonl` sibling, if any; a prompt/completion one is copied as it
    is) rendered into ``<folder>/rendered/<digest>/data.jsonl`` beside it (written once,
    atomically; the digest is the rendered content's, so bases sharing a template share one copy,
    and the copies go with the data set's folder). A pair without chat rows is returned as it is."""
    from lora_engine.atomic import atomic_folder

    data_file = Path(data_file)
    if not needs_rendering(data_file):
        return data_file
    texts = {path.name: _rendered_text(path, tokenizer) for path in _pair(data_file)}
    digest = hashlib.sha256("\0".join(texts.values()).encode()).hexdigest()[:32]
    final = data_file.parent / "rendered" / digest
    if not (final / data_file.name).is_file():
        try:
            with atomic_folder(final, replace=final.exists()) as tmp:
                for name, text in texts.items():
                    (tmp / name).write_text(text, encoding="utf-8")
        except FileExistsError:  # a concurrent worker rendered the same content first
            pass
    return final / data_file.name
