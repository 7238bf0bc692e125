"""A generated row's text as its tokens arrive: what may be streamed now, and where it stops.

The row's text is its ids decoded as `adapter predict` decodes them (special tokens dropped,
white space stripped), cut before the first `stop` string it contains. After each token the
whole text so far is decoded again (a token can complete a character the previous one began),
and the part that can no longer change is released:

    decoded so far:   "The Eagle is a co"        stops: ["coffee"]
    released:         "The Eagle is a "         held: "co" (a stop may be starting),
                                                 trailing white space (the end strips it),
                                                 a half character (U+FFFD)

A stop string found ends the row ("stop": its text ends where the stop begins; the stop is not
returned); the released pieces always join to the final text.
"""

from __future__ import annotations

from collections.abc import Sequence

HALF_CHARACTER = "\ufffd"  # what decoding shows for the first bytes of a multi-byte character


class RowText:
    def __init__(self, tokenizer, stops: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stops = tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.released = 0  # characters of the text already given out
        self.text = ""
        self.stopped = False  # a stop string ended the row

    def add(self, ids: Sequence[int]) -> str:
        """The row's new tokens; returns the text they release (maybe empty). Sets `stopped`
        when the text now holds a stop string: the row must end."""
        self.ids.extend(ids)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True).lstrip()
        ends = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if ends:
            self.text, self.stopped = text[:min(ends)], True
            return self._release(len(self.text))
        self.text = text
        return self._release(len(text) - self._held(text))

    def finish(self) -> str:
        """The row has ended (its length, its end-of-sequence, a stop): the rest of its text."""
        if not self.stopped:
            self.text = self.text.strip()
        return self._release(len(self.text))

    def _held(self, text: str) -> int:
        """How many trailing characters could still change or vanish."""
        kept = text.rstrip().rstrip(HALF_CHARACTER)
        starts = [n for stop in self.stops for n in range(1, min(len(stop) - 1, len(kept)) + 1)
                  if kept.endswith(stop[:n])]  # `kept` ends with the beginning of a stop string
        return len(text) - len(kept) + max(starts, default=0)

    def _release(self, upto: int) -> str:
        if upto <= self.released:
            return ""
        piece = self.text[self.released:upto]
        self.released = upto
        return piece
