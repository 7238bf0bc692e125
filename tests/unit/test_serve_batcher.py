"""worker/serve/batcher.py's policy, step by step: a core (the Core protocol, as server.py
implements it) whose rows each live a set number of decode steps, and whose `step` waits for the
test's go, so every arrival lands between two known steps. Requests join the decoding rows at the
next step, the cap holds them back until rows leave, classify requests run between two steps,
a cancel drops rows at once, and a request of more rows than the cap runs when the batch is empty."""

from __future__ import annotations

import threading

import pytest

from worker.serve.batcher import Batcher, Work

WAIT_S = 30  # against a stuck thread, not a timing


class SteppedCore:
    def __init__(self, lives: dict[str, int]):
        self.lives = lives  # request name -> the steps its rows decode
        self.left: dict[str, tuple[int, int]] = {}  # name -> (rows, steps left)
        self.log: list[tuple] = []
        self.entered, self.go, self.stepped = (threading.Semaphore(0) for _ in range(3))

    @property
    def rows(self) -> int:
        return sum(rows for rows, _ in self.left.values())

    def classify_batch(self, works: list[Work]) -> None:
        self.log.append(("classify", *sorted(w.payload for w in works)))
        for work in works:
            work.future.set_result(work.payload)

    def admit(self, work: Work) -> None:
        self.left[work.payload] = (work.rows, self.lives[work.payload])
        self.log.append(("admit", work.payload))
        work.future.set_result(None)

    def step(self) -> None:
        self.entered.release()
        assert self.go.acquire(timeout=WAIT_S)
        self.log.append(("step", self.rows))
        for name, (rows, steps) in list(self.left.items()):
            if steps == 1:
                del self.left[name]
                self.log.append(("end", name))
            else:
                self.left[name] = (rows, steps - 1)
        self.stepped.release()

    def cancel_work(self, work: Work) -> None:
        if self.left.pop(work.payload, None) is not None:
            self.log.append(("cancel", work.payload))

    def close_all(self, exc: BaseException) -> None:
        self.left.clear()


@pytest.fixture
def run():
    made = []

    def make(lives: dict[str, int], max_batch: int):
        core = SteppedCore(lives)
        made.append(batcher := Batcher(core, window_s=0, max_batch=max_batch))
        return core, batcher

    yield make
    for batcher in made:
        batcher.core.go.release(100)
        batcher.close()


def put(batcher: Batcher, kind: str, name: str, rows: int = 1) -> Work:
    work = Work(kind, name, rows=rows)
    batcher.queue.put(work)
    return work


def in_step(core: SteppedCore) -> None:
    """Wait until the loop is blocked in a step: everything before it has happened."""
    assert core.entered.acquire(timeout=WAIT_S)


def finish_step(core: SteppedCore) -> None:
    core.go.release()
    assert core.stepped.acquire(timeout=WAIT_S)


def next_step(core: SteppedCore) -> None:
    finish_step(core)
    in_step(core)


def test_rows_join_between_steps_within_the_cap_and_classify_never_waits(run):
    core, batcher = run({"a": 2, "b": 3, "c": 1}, max_batch=2)
    put(batcher, "generate", "a")
    in_step(core)  # a decodes: its first step
    put(batcher, "generate", "b")
    c = put(batcher, "generate", "c")
    put(batcher, "classify", "x")
    next_step(core)
    assert core.log == [("admit", "a"), ("step", 1), ("classify", "x"), ("admit", "b")]
    assert not c.future.done()  # a and b fill the cap of 2 rows
    next_step(core)  # a's second step: it ends, and c takes its place
    assert core.log[4:] == [("step", 2), ("end", "a"), ("admit", "c")]
    next_step(core)
    assert core.log[7:] == [("step", 2), ("end", "c")]
    finish_step(core)
    assert core.log[9:] == [("step", 1), ("end", "b")]


def test_a_cancel_drops_rows_now_and_a_wide_request_runs_alone(run):
    core, batcher = run({"a": 100, "wide": 1}, max_batch=2)
    a = put(batcher, "generate", "a")
    in_step(core)
    put(batcher, "generate", "wide", rows=3)  # n=3 over a cap of 2: waits for an empty batch
    next_step(core)
    assert ("admit", "wide") not in core.log
    batcher.cancel(a)
    next_step(core)
    assert core.log[-3:] == [("step", 1), ("cancel", "a"), ("admit", "wide")]
    finish_step(core)
    assert core.log[-2:] == [("step", 3), ("end", "wide")]
