"""OpenAI's chat format for generation data: validated whole and bounded at upload, one format per
file, rendered with the base model's own chat template (SmolLM2's) or the plain fallback (GPT-2's
tokenizer has none)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from lora_engine.data import GenerationExample, load_examples
from lora_engine.data.chat import (
    MAX_MESSAGES,
    MAX_PROBLEMS_PER_ROW,
    plain_prompt,
    render_chat_dataset,
    render_row,
)
from lora_engine.data.custom import MAX_PROBLEMS_KEPT, file_format, read_jsonl, validate_jsonl
from lora_engine.errors import DataValidationError
from lora_engine.models import load_tokenizer


@pytest.fixture(scope="module")
def smol():
    """SmolLM2-135M-Instruct's tokenizer: a real chat template."""
    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="module")
def gpt2():
    """GPT-2's tokenizer: no chat template."""
    return load_tokenizer("tiny-gpt2")


def chat(*pairs: tuple[str, str], **extra) -> dict:
    return {"messages": [{"role": r, "content": c} for r, c in pairs], **extra}


GOOD = chat(("system", "Answer briefly."), ("user", "Capital of France?"), ("assistant", "Paris."))
ANSWER = {"role": "assistant", "content": "a"}
CHAT_QA = chat(("user", "q"), ("assistant", "a"))
MULTI = chat(("user", "Hi"), ("assistant", "Hello."), ("user", "2+2?"), ("assistant", "4"))


def write(path: Path, *rows) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path, kind: str | None = None) -> dict[int, list[str]]:
    with pytest.raises(DataValidationError) as info:
        read_jsonl(path, kind)
    out: dict[int, list[str]] = {}
    for line, why in info.value.problems:
        out.setdefault(line, []).append(why)
    return out


def test_the_format_decides_the_kind_and_rows_are_kept_as_role_and_content(tmp_path: Path):
    weighted = chat(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))
    weighted["messages"][1]["weight"] = 0
    weighted["messages"][3]["weight"] = 1
    parsed = read_jsonl(write(tmp_path / "c.jsonl", GOOD, "", MULTI, weighted), None)
    assert (parsed.format, parsed.kind, len(parsed.rows)) == ("chat", "generation", 3)
    assert parsed.rows[2] == chat(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))
    assert validate_jsonl(tmp_path / "c.jsonl", "generation") == parsed.rows
    pc = read_jsonl(write(tmp_path / "p.jsonl", {"prompt": "a", "completion": "b"}), None)
    tl = read_jsonl(write(tmp_path / "t.jsonl", {"text": "a", "label": 0}, {"text": "b", "label": 1}), None)
    assert (pc.format, pc.kind, tl.format, tl.kind) == ("prompt_completion", "generation", "text_label",
                                                        "classification")
    assert file_format(tmp_path / "c.jsonl") == "chat"
    assert file_format(tmp_path / "p.jsonl") == "prompt_completion"


def test_every_bad_chat_row_is_named_with_its_line_and_reason(tmp_path: Path):
    bad = {
        2: chat(("user", "q")),  # no assistant
        3: chat(("user", "q"), ("assistant", "a"), ("user", "again?")),  # ends with the user
        4: chat(("wizard", "q"), ("assistant", "a")),
        5: chat(("user", "   "), ("assistant", "a")),
        6: chat(("user", "q"), ("assistant", "a"), tools=[]),
        7: {"messages": [{"role": "user", "content": [{"type": "text", "text": "q"}]},
                         {"role": "assistant", "content": "a"}]},
        8: {"messages": [{"role": "user", "content": "q", "name": "bob"}, ANSWER]},
        9: {"messages": []},
        10: {"messages": "hello"},
        11: chat(("assistant", "a")),  # nothing it answers
        12: {"messages": [{"role": "user", "content": "q", "weight": 1}, ANSWER]},
        13: {"messages": [{"role": "user", "content": "q"}, {**ANSWER, "weight": 0}]},
        14: {"prompt": "a", "completion": "b"},  # another format than line 1's
        15: "[1, 2]",
    }
    path = write(tmp_path / "bad.jsonl", GOOD, *[bad[n] for n in sorted(bad)])
    found = problems(path)
    assert sorted(found) == sorted(bad)
    expect = {2: "no assistant message", 3: "the last message is the 'user' one",
              4: "'wizard'; allowed: system",
              5: "messages[0].content is empty", 6: "unknown field(s) 'tools'", 7: "content must be a string",
              8: "unknown key(s) 'name'", 9: "'messages' is empty", 10: "'messages' must be a list",
              11: "only an assistant message", 12: "weight is only allowed on assistant messages",
              13: "its weight must be 1", 14: "a prompt/completion row, but line 1 is chat (messages)",
              15: "not a JSON object"}
    for line, text in expect.items():
        assert any(text in why for why in found[line]), (line, found[line])
    with pytest.raises(DataValidationError) as info:
        read_jsonl(path, None)
    message = str(info.value)
    assert "line 2:" in message and "14 invalid row(s)" in message


def test_hostile_rows_are_refused_within_bounds(tmp_path: Path):
    deep = '{"messages": [' + "[" * 40 + "]" * 40 + "]}"
    many = chat(*[("user", "q")] * MAX_MESSAGES, ("assistant", "a"))
    noisy = {"messages": [{"role": 7, "content": None, "x": 1}] * 50 + [{"role": "user", "content": "q"}]}
    found = problems(write(tmp_path / "h.jsonl", GOOD, deep, many, noisy))
    assert "nests deeper than 32" in found[2][0]
    assert found[3] == [f"{MAX_MESSAGES + 1} messages; a row has at most {MAX_MESSAGES}"]
    assert len(found[4]) == MAX_PROBLEMS_PER_ROW + 1 and "more problem(s) in this row" in found[4][-1]
    with pytest.raises(DataValidationError, match="the limit is 100 bytes"):
        read_jsonl(write(tmp_path / "big.jsonl", *[GOOD] * 5), None, max_bytes=100)
    unknown = problems(write(tmp_path / "u.jsonl", {"question": "q", "answer": "a"}))
    assert "no known field" in unknown[1][0]
    # A file given as classification is read as text/label, whatever its rows say.
    as_classification = problems(write(tmp_path / "k.jsonl", GOOD), "classification")
    assert "unknown field(s) 'messages'" in as_classification[1][0]


def test_rendering_with_smollm2s_chat_template_and_the_plain_fallback(smol, gpt2):
    assert smol.chat_template
    rendered = render_row(MULTI, smol)
    assert rendered["completion"] == "4"
    expected = smol.apply_chat_template(MULTI["messages"][:3], tokenize=False, add_generation_prompt=True)
    assert rendered["prompt"] == expected
    assert rendered["prompt"].endswith("<|im_start|>assistant\n") and "Hello.<|im_end|>" in rendered["prompt"]

    assert not getattr(gpt2, "chat_template", None)
    plain = render_row(GOOD, gpt2)
    assert plain == {"prompt": "system: Answer briefly.\nuser: Capital of France?\nassistant: ",
                     "completion": "Paris."}
    assert plain["prompt"] == plain_prompt(GOOD["messages"][:2])


def test_a_stored_chat_file_is_rendered_beside_it_once_and_trains_as_prompt_completion(tmp_path: Path, smol,
                                                                                       gpt2):
    folder = tmp_path / "ds"
    folder.mkdir()
    data = write(folder / "data.jsonl", *[chat(("user", f"q{i}"), ("assistant", f"a{i}")) for i in range(10)])
    write(folder / "data.validation.jsonl", chat(("user", "vq"), ("assistant", "va")))
    with pytest.raises(ValueError, match="not rendered"):
        load_examples("custom-generation", "train", data_dir=tmp_path, dataset=data)
    out = render_chat_dataset(data, gpt2)
    assert out.parent.parent == folder / "rendered" and out.name == "data.jsonl"
    assert render_chat_dataset(data, gpt2) == out  # the same content: the same copy
    train = load_examples("custom-generation", "train", data_dir=tmp_path, dataset=out)
    assert train[0] == GenerationExample("user: q0\nassistant: ", "a0", "user: q0\nassistant: ")
    assert len(train) == 10
    (val,) = load_examples("custom-generation", "validation", data_dir=tmp_path, dataset=out)
    assert val.completion == "va"
    smol_out = render_chat_dataset(data, smol)
    assert smol_out != out and "<|im_start|>user\\nq0<|im_end|>" in smol_out.read_text()
    prompt_completion = write(tmp_path / "pc.jsonl", {"prompt": "a", "completion": "b"})
    assert render_chat_dataset(prompt_completion, gpt2) == prompt_completion


def test_a_template_that_refuses_a_row_fails_the_job_with_the_reason(tmp_path: Path, smol):
    """A chat template may raise for a row (Gemma's and Mistral's refuse a system message)."""
    tok = copy.copy(smol)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}"
                         "{{ m['content'] }}{% endfor %}")
    folder = tmp_path / "ds"
    folder.mkdir()
    data = write(folder / "data.jsonl", MULTI, GOOD)
    with pytest.raises(DataValidationError, match="refuses chat row 2: System role not supported"):
        render_chat_dataset(data, tok)
    assert not (folder / "rendered").exists()
    assert "raise_exception" not in smol.chat_template  # the module's tokenizer is untouched


def test_a_file_of_countless_bad_rows_keeps_a_bounded_report(tmp_path: Path):
    rows = [GOOD] + [{"messages": [{"role": "user", "content": "q"}]}] * (MAX_PROBLEMS_KEPT + 500)
    with pytest.raises(DataValidationError) as info:
        read_jsonl(write(tmp_path / "many.jsonl", *rows), None)
    problems = info.value.problems
    assert len(problems) == MAX_PROBLEMS_KEPT + 1 and problems[0][0] == 2
    assert problems[-1] == (0, f"500 more invalid row(s) after line {MAX_PROBLEMS_KEPT + 1}, not listed")
    assert len(str(info.value)) < 10_000


def test_a_rendered_chat_file_is_its_prompt_completion_twin_and_trains(tmp_path: Path, gpt2):
    """Rendering is the only step between a chat data set and the generation path: it writes the
    prompt/completion file one would write by hand, and that file trains."""
    from lora_engine.generate import DecodeSettings
    from lora_engine.recipe import train

    pairs = [(f"name[N{i % 5}], food[F{i % 3}]", f"N{i % 5} serves F{i % 3} food.") for i in range(20)]
    folder = tmp_path / "chat"
    folder.mkdir()
    data = write(folder / "data.jsonl", *[chat(("system", "Describe."), ("user", q), ("assistant", a))
                                          for q, a in pairs])
    twin = write(tmp_path / "twin.jsonl", *[{"prompt": f"system: Describe.\nuser: {q}\nassistant: ",
                                             "completion": a} for q, a in pairs])
    spec = {"task": "custom-generation", "base_model": "tiny-llama", "max_steps": 2, "batch_size": 4,
            "max_length": 48, "eval_size": 2}
    decode = DecodeSettings(num_beams=1, no_repeat_ngram_size=0, max_new_tokens=4)
    rendered = render_chat_dataset(data, gpt2)  # tiny-llama's tokenizer is GPT-2's: the plain template
    assert rendered.read_bytes() == twin.read_bytes()
    result = train({**spec, "dataset": str(rendered)}, tmp_path / "a", data_dir=tmp_path, decode=decode)
    assert len(result.losses) == 2 and all(0 < loss < 20 for loss in result.losses)
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()


def test_a_pair_of_formats_renders_whichever_holds_chat(tmp_path: Path, gpt2):
    """A training file and its validation sibling may differ (chat / prompt-completion): both
    generation; the chat one is rendered, the other copied as it is."""
    pc = {"prompt": "user: q\nassistant: ", "completion": "a"}
    for train, val in ((CHAT_QA, pc), (pc, CHAT_QA)):
        folder = tmp_path / f"{'chat' if train is CHAT_QA else 'pc'}-first"
        folder.mkdir()
        data = write(folder / "data.jsonl", *[train] * 3)
        write(folder / "data.validation.jsonl", val)
        out = render_chat_dataset(data, gpt2)
        assert out != data
        assert [json.loads(line) for line in out.read_text().splitlines()] == [pc] * 3
        assert json.loads(out.with_name("data.validation.jsonl").read_text()) == pc
