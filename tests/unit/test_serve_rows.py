"""worker/serve/rows.py: a generated row's text released token by token (GPT-2's real BPE
tokenizer): the pieces join to the final text, stop strings cut it and end the row, and text
that may still change (a stop's beginning, trailing white space, half a character) is held."""

from __future__ import annotations

import pytest

from worker.serve.rows import RowText


@pytest.fixture(scope="module")
def tok():
    from lora_engine.models import gpt2_tokenizer

    return gpt2_tokenizer()


def feed(tok, text: str, stops=(), add_eos: bool = False) -> tuple[RowText, list[str]]:
    """`text`'s tokens one at a time, until the row stops; then the row finishes."""
    row, pieces = RowText(tok, stops), []
    ids = tok.encode(text) + ([tok.eos_token_id] if add_eos else [])
    for token in ids:
        pieces.append(row.add([token]))
        if row.stopped:
            break
    pieces.append(row.finish())
    return row, pieces


def test_pieces_join_to_the_stripped_decoding(tok):
    text = "  The Eagle is a coffee shop.  \n"
    row, pieces = feed(tok, text, add_eos=True)
    assert row.text == tok.decode(tok.encode(text), skip_special_tokens=True).strip()
    assert "".join(pieces) == row.text and not row.stopped
    assert pieces[-1] == ""  # nothing was held back at the end: white space is dropped
    assert sum(1 for p in pieces if p) > 3  # released as it came, not at the end


def test_a_stop_string_ends_the_row_before_it(tok):
    row, pieces = feed(tok, "The Eagle is a coffee shop. It serves Italian food.", stops=["shop", "zzz"])
    assert row.stopped and row.text == "The Eagle is a coffee "
    assert "".join(pieces) == row.text
    assert len(row.ids) < len(tok.encode("The Eagle is a coffee shop. It serves Italian food."))


def test_a_stop_string_spanning_tokens_is_never_released_in_part(tok):
    stop = "coffee sh"
    row, pieces = feed(tok, "The Eagle is a coffee shop near the river", stops=[stop])
    released = ""
    for piece in pieces:
        released += piece
        assert "coffee" not in released  # "coffee" begins the stop: held until decided
    assert row.text == "The Eagle is a "


def test_a_held_stop_beginning_is_released_when_the_stop_does_not_follow(tok):
    row, pieces = feed(tok, "a coffee house", stops=["coffee shop"])
    assert not row.stopped and "".join(pieces) == row.text == "a coffee house"


def test_a_multibyte_character_is_released_whole(tok):
    _, pieces = feed(tok, "café ☕ ok")
    assert "".join(pieces) == "café ☕ ok"
    assert all("\ufffd" not in p for p in pieces)
