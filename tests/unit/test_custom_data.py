"""A tenant's JSONL data set: validation like a fine-tuning API, label ids, the split."""

import json

import pytest

from lora_engine.data import ClassificationExample, GenerationExample, custom_label_names, load_examples
from lora_engine.data.custom import HOLDOUT_FRACTION, load_custom, validate_jsonl, validation_sibling
from lora_engine.errors import DataValidationError


def write_rows(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_every_bad_row_is_reported_with_line_and_reason(tmp_path):
    path = tmp_path / "bad.jsonl"
    lines = [
        json.dumps({"text": "fine", "label": "pos"}),  # 1 ok
        "{not json",  # 2
        json.dumps(["text", "label"]),  # 3
        json.dumps({"label": "neg"}),  # 4 missing text
        json.dumps({"text": "   ", "label": "neg"}),  # 5 empty text
        json.dumps({"text": 7, "label": "neg"}),  # 6 wrong type
        json.dumps({"text": "x", "label": "neg", "source": "web"}),  # 7 unknown field
        json.dumps({"text": "x", "label": 1.5}),  # 8 float label
        json.dumps({"text": "x", "label": True}),  # 9 bool label
        json.dumps({"text": "x", "label": 1}),  # 10 int after strings
        "",  # 11 blank: ignored
        json.dumps({"text": "x", "text_pair": ["a"], "label": "neg"}),  # 12 pair wrong type
        json.dumps({"text": "fine too", "label": "neg"}),  # 13 ok
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b'{"text": "caf\xe9", "label": "pos"}\n')  # 14
    with pytest.raises(DataValidationError) as err:
        validate_jsonl(path, "classification")
    problems = dict(err.value.problems)
    assert sorted(problems) == [2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14]
    assert problems[2].startswith("not valid JSON")
    assert problems[3] == "not a JSON object (got array)"
    assert problems[4] == "missing field 'text'"
    assert problems[5] == "field 'text' is empty"
    assert problems[6] == "field 'text' must be a string (got int)"
    assert problems[7].startswith("unknown field(s) 'source'; allowed: text, text_pair, label")
    assert problems[8] == "label must be an integer or a label name string (got float)"
    assert problems[9] == "label must be an integer or a label name string (got boolean)"
    assert "use one label type" in problems[10]
    assert problems[12] == "field 'text_pair' must be a string (got array)"
    assert problems[14].startswith("not valid UTF-8 (byte 0xe9 at column 14)")
    msg = str(err.value)
    assert str(path) in msg and "11 invalid row(s)" in msg and "line 14:" in msg


def test_generation_rows(tmp_path):
    path = write_rows(tmp_path / "gen.jsonl", [
        {"prompt": "Q: 2+2?\n", "completion": "4"},
        {"prompt": "Q: hi\n"},
        {"prompt": "Q\n", "completion": "", "label": 1},
    ])
    with pytest.raises(DataValidationError) as err:
        validate_jsonl(path, "generation")
    assert err.value.problems == [
        (2, "missing field 'completion'"),
        (3, "unknown field(s) 'label'; allowed: prompt, completion"),
        (3, "field 'completion' is empty"),
    ]
    ok = write_rows(tmp_path / "ok.jsonl", [{"prompt": "a", "completion": "b"}])
    assert validate_jsonl(ok, "custom-generation") == [{"prompt": "a", "completion": "b"}]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty: no rows"),
        (b"\n  \n", "empty: no rows"),
        (b'{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', "only one distinct label"),
    ],
)
def test_file_level_problems_on_line_0(tmp_path, content, reason):
    path = tmp_path / "d.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataValidationError) as err:
        validate_jsonl(path, "classification")
    assert err.value.problems[0][0] == 0 and err.value.problems[0][1].startswith(reason)
    assert f"d.jsonl: not usable, nothing was stored or trained:\n  file: {reason}" in str(err.value)


def test_size_limit_and_missing_file_and_kind(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}])
    with pytest.raises(DataValidationError, match=r"file: \d+ bytes; the limit is 10 bytes"):
        validate_jsonl(path, "classification", max_bytes=10)
    with pytest.raises(DataValidationError, match="no such file"):
        validate_jsonl(tmp_path / "nope.jsonl", "classification")
    with pytest.raises(ValueError, match="unknown data kind 'regression'"):
        validate_jsonl(path, "regression")


def test_rows_normalised_and_bom_accepted(tmp_path):
    path = tmp_path / "d.jsonl"
    text = '\ufeff{"text": "a", "label": 1}\n{"text": "b", "text_pair": "c", "label": 0}\n'
    path.write_bytes(text.encode())
    assert validate_jsonl(path, "classification") == [
        {"text": "a", "text_pair": None, "label": 1},
        {"text": "b", "text_pair": "c", "label": 0},
    ]


def test_string_labels_sorted_to_ids(tmp_path):
    rows = [{"text": f"t{i}", "label": ["spam", "ham", "eggs"][i % 3]} for i in range(30)]
    path = write_rows(tmp_path / "d.jsonl", rows)
    assert custom_label_names(path) == ("eggs", "ham", "spam")
    data = load_custom(path, "classification")
    train = load_examples("custom-classification", "train", data_dir=tmp_path, dataset=path)
    val = load_examples("custom-classification", "validation", data_dir=tmp_path, dataset=path)
    names = data.label_names
    by_text = {r["text"]: r["label"] for r in rows}
    for ex in train + val:
        assert isinstance(ex, ClassificationExample) and names[ex.label] == by_text[ex.text]


def test_integer_labels_map_to_themselves_and_sort_numerically(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 12} for i in range(24)]
    path = write_rows(tmp_path / "d.jsonl", rows)
    data = load_custom(path, "classification")
    assert data.label_names == tuple(str(i) for i in range(12))
    examples = load_examples("custom-classification", "train", data_dir=tmp_path, dataset=path)
    assert all(ex.label == int(ex.text[1:]) % 12 for ex in examples)


def test_holdout_is_deterministic_disjoint_and_ten_percent(tmp_path):
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(95)]
    path = write_rows(tmp_path / "g.jsonl", rows)
    a, b = load_custom(path, "generation"), load_custom(path, "generation")
    assert a.train == b.train and a.validation == b.validation
    assert len(a.validation) == round(HOLDOUT_FRACTION * 95) == 10
    assert len(a.train) == 85
    seen = {r["prompt"] for r in a.train} | {r["prompt"] for r in a.validation}
    assert seen == {f"p{i}" for i in range(95)}
    assert a.validation != rows[-10:]  # a random hold-out, not the file's tail
    assert a.validation_source.startswith("hold-out of 10 row(s)")
    val = load_examples("custom-generation", "validation", data_dir=tmp_path, dataset=path)
    assert val == [GenerationExample(r["prompt"], r["completion"], r["prompt"]) for r in a.validation]


def test_sibling_validation_file_is_used_whole(tmp_path):
    path = write_rows(tmp_path / "mine.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    sibling = validation_sibling(path)
    assert sibling.name == "mine.validation.jsonl"
    write_rows(sibling, [{"text": "c", "label": "z"}])
    data = load_custom(path, "classification")
    assert [r["text"] for r in data.train] == ["a", "b"]
    assert [r["text"] for r in data.validation] == ["c"]
    assert data.label_names == ("x", "y", "z")  # ids cover labels seen in either file
    write_rows(sibling, [{"text": "c"}])
    with pytest.raises(DataValidationError) as err:
        load_custom(path, "classification")
    assert err.value.path == str(sibling) and err.value.problems == [(1, "missing field 'label'")]


def test_single_row_without_sibling_cannot_be_split(tmp_path):
    path = write_rows(tmp_path / "one.jsonl", [{"prompt": "a", "completion": "b"}])
    with pytest.raises(DataValidationError, match="need at least 2"):
        load_custom(path, "generation")
