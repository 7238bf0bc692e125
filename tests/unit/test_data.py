"""Task loaders on the real shared data files (read only)."""

import os
from pathlib import Path

import pytest

from lora_engine.catalog import GLUE_TASKS, TASKS
from lora_engine.data import (
    E2E_PROMPT,
    ClassificationExample,
    GenerationExample,
    count_train_rows,
    e2e_prompt,
    e2e_references,
    load_examples,
)
from lora_engine.errors import LoraFleetInputError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(os.environ.get("LORAFLEET_DATA_DIR", Path(__file__).parents[3] / "shared" / "data"))

# Row counts from the data README: a loader that skips or duplicates rows fails here.
VALIDATION_ROWS = {"cola": 856, "sst2": 692, "mrpc": 367, "stsb": 575, "rte": 249, "qnli": 1000,
                   "mnli": 1000, "qqp": 1000}


@pytest.mark.parametrize("task", GLUE_TASKS)
def test_glue_validation_rows_fields_and_labels(task):
    examples = load_examples(task, "validation", data_dir=DATA)
    assert len(examples) == VALIDATION_ROWS[task]
    assert all(isinstance(e, ClassificationExample) for e in examples)
    paired = len(TASKS[task].text_fields) == 2
    assert all((e.text_pair is not None) == paired for e in examples)
    assert all(e.text for e in examples)
    labels = {e.label for e in examples}
    if task == "stsb":
        assert all(isinstance(v, float) and 0.0 <= v <= 5.0 for v in labels)
        assert len(labels) > 20
    else:
        assert labels == set(range(TASKS[task].num_labels))
        assert all(type(v) is int for v in labels)


def test_glue_train_split_and_limit():
    rows = load_examples("mrpc", "train", data_dir=DATA)
    assert len(rows) == 3300
    first = load_examples("mrpc", "train", data_dir=DATA, limit=5)
    assert first == rows[:5]


def test_e2e_examples_and_references_grouped_by_mr():
    examples = load_examples("e2e", "validation", data_dir=DATA)
    assert len(examples) == 4672
    assert all(isinstance(e, GenerationExample) for e in examples)
    first = examples[0]
    assert first.group == "name[Alimentum], area[city centre], familyFriendly[no]"
    assert first.prompt == E2E_PROMPT.format(mr=first.group) == e2e_prompt(first.group)
    assert first.completion == "There is a place in the city centre, Alimentum, that is not family-friendly."
    prompts, refs = e2e_references(examples)
    assert len(prompts) == len(refs) == 547
    assert prompts[0] == first.prompt
    assert sum(len(r) for r in refs) == 4672
    # Every reference of a prompt came from rows with that MR.
    by_prompt = {}
    for e in examples:
        by_prompt.setdefault(e.prompt, []).append(e.completion)
    assert all(by_prompt[p] == r for p, r in zip(prompts, refs, strict=True))
    assert len(refs[0]) > 1


def test_e2e_references_first_seen_order_for_custom_groups():
    ex = [GenerationExample("p2", "b", "g2"), GenerationExample("p1", "a", "g1"),
          GenerationExample("p2", "c", "g2")]
    assert e2e_references(ex) == (["p2", "p1"], [["b", "c"], ["a"]])


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="unknown split 'test'"):
        load_examples("cola", "test", data_dir=DATA)
    with pytest.raises(ValueError, match="unknown task"):
        load_examples("squad", "train", data_dir=DATA)
    with pytest.raises(ValueError, match="limit must be >= 1"):
        load_examples("cola", "train", data_dir=DATA, limit=0)
    with pytest.raises(ValueError, match="needs a dataset"):
        load_examples("custom-classification", "train", data_dir=DATA)
    with pytest.raises(ValueError, match="dataset= is for custom tasks"):
        load_examples("cola", "train", data_dir=DATA, dataset="x.jsonl")


def test_missing_local_files_offline_names_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LoraFleetInputError) as err:
        load_examples("rte", "train", data_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "glue" / "rte" / "train.jsonl") in msg
    assert "LORAFLEET_DATA_DIR" in msg and "HF_HUB_OFFLINE=1" in msg


def test_missing_local_files_online_without_datasets_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(LoraFleetInputError) as err:
        load_examples("e2e", "validation", data_dir=tmp_path)
    msg = str(err.value)
    assert "pip install datasets" in msg and str(tmp_path / "e2e" / "validation.csv") in msg


def test_glue_row_missing_a_field_is_a_clear_error(tmp_path):
    folder = tmp_path / "glue" / "rte"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text('{"sentence1": "a", "label": 0}\n')
    with pytest.raises(LoraFleetInputError, match=r"row 1 lacks field\(s\) \['sentence2'\]"):
        load_examples("rte", "train", data_dir=tmp_path)
    (folder / "train.jsonl").write_text('{"sentence1": "a", "sentence2": "b", "label": 0}\n{oops\n')
    with pytest.raises(LoraFleetInputError, match=r"train\.jsonl: line 2 is not valid JSON"):
        load_examples("rte", "train", data_dir=tmp_path)


@pytest.mark.parametrize("task", [*GLUE_TASKS, "e2e"])
def test_train_rows_are_counted_as_the_loader_returns_them(task):
    # The submit path sizes the auto budget from the count; the worker trains on the loaded rows.
    assert count_train_rows(task, data_dir=DATA) == len(load_examples(task, "train", data_dir=DATA))


def test_glue_row_count_skips_blank_lines_like_the_loader(tmp_path):
    folder = tmp_path / "glue" / "sst2"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text('{"sentence": "a", "label": 1}\n\n  \n{"sentence": "b", "label": 0}')
    loaded = load_examples("sst2", "train", data_dir=tmp_path)
    assert count_train_rows("sst2", data_dir=tmp_path) == len(loaded) == 2


@pytest.fixture(scope="module")
def minilm():
    from lora_engine.models import minilm_tokenizer

    return minilm_tokenizer()


@pytest.mark.parametrize("task", GLUE_TASKS)
def test_the_default_max_length_keeps_the_training_rows_whole(task, minilm):
    """A task's default max_length truncates at most 1 % of its training rows: a cut pair loses the
    end of its premise (RTE at 128 tokens cut 12 % of its rows and trained at chance)."""
    from lora_engine.data.batching import encode_classification

    examples = load_examples(task, "train", data_dir=DATA)[:3000]
    limit = TASKS[task].max_length
    whole = encode_classification(examples, minilm, max_length=100_000).input_ids
    cut = encode_classification(examples, minilm, max_length=limit).input_ids
    truncated = sum(len(a) > len(b) for a, b in zip(whole, cut, strict=True))
    assert all(len(b) <= limit for b in cut)
    assert truncated <= 0.01 * len(examples), f"{task}: {truncated} of {len(examples)} rows cut at {limit}"


def test_a_loaded_split_is_remembered_by_content_not_by_name_or_mtime(tmp_path):
    train = tmp_path / "glue" / "rte" / "train.jsonl"
    train.parent.mkdir(parents=True)
    train.write_text('{"sentence1": "a", "sentence2": "b", "label": 0}\n')
    first = load_examples("rte", "train", data_dir=tmp_path)
    first.append("a caller's own list")
    assert load_examples("rte", "train", data_dir=tmp_path) == [ClassificationExample("a", "b", 0)]
    stamp = train.stat()
    train.write_text('{"sentence1": "c", "sentence2": "d", "label": 1}\n')  # same size
    os.utime(train, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert load_examples("rte", "train", data_dir=tmp_path) == [ClassificationExample("c", "d", 1)]
