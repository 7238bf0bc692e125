"""The bounded JSON parser every document from outside goes through."""

from __future__ import annotations

import pytest

from lora_engine.safe_json import MAX_DEPTH, DocumentError, loads


@pytest.mark.parametrize(("text", "says"), [
    ('{"tenant": "a", "tenant": "b"}', "key 'tenant' appears twice"),
    ('{"lr": NaN}', "NaN is not a number JSON allows"),
    ('[Infinity]', "Infinity is not a number JSON allows"),
    ('[' * 100_000, f"nests deeper than {MAX_DEPTH} levels"),
    ('{"a": ' * 50_000 + '1' + '}' * 50_000, f"nests deeper than {MAX_DEPTH} levels"),
    ('{"a": 1', "is not JSON: Expecting ',' delimiter at line 1 column 8"),
    (b'\xff\xfe', "is not UTF-8 text (byte offset 0)"),
])
def test_a_hostile_document_is_refused_with_its_reason(text, says):
    with pytest.raises(DocumentError) as err:
        loads(text, what="upload.json")
    assert str(err.value).startswith("upload.json")
    assert says in str(err.value)


def test_brackets_inside_strings_do_not_count_as_nesting():
    text = '{"text": "' + "[{" * 1000 + '\\" ]"}'
    assert loads(text, what="row") == {"text": "[{" * 1000 + '" ]'}


def test_nesting_up_to_the_cap_is_accepted():
    value = loads("[" * MAX_DEPTH + "]" * MAX_DEPTH, what="doc")
    for _ in range(MAX_DEPTH - 1):
        value = value[0]
    assert value == []
    with pytest.raises(DocumentError):
        loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), what="doc")
