"""poll_until, the scheduler back-off and the log follower."""
import threading
import time

import pytest

from hpcorch.observe.status import follow
from hpcorch.util.poll import Backoff, PollTimeout, poll_until


def test_poll_until_returns_the_first_answer_even_zero():
    answers = iter([None, False, 0])
    assert poll_until(lambda: next(answers), timeout_s=5, interval_s=0.001) == 0


def test_poll_until_names_what_it_waited_for():
    with pytest.raises(PollTimeout, match="job 7 RUNNING: not reached in 0.05 s"):
        poll_until(lambda: None, timeout_s=0.05, interval_s=0.01, what=lambda: "job 7 RUNNING")


def test_backoff_grows_to_its_cap():
    now = [0.0]
    backoff = Backoff(first_s=1, factor=2, max_s=15, clock=lambda: now[0])
    asked = []
    for tick in range(0, 120):
        now[0] = float(tick)
        if backoff.due():
            asked.append(tick)
    gaps = [b - a for a, b in zip(asked, asked[1:], strict=False)]
    assert asked[0] == 0 and gaps[:4] == [1, 2, 4, 8] and set(gaps[4:]) == {15}


def test_follow_reads_often_but_asks_rarely_and_hides_submitit(tmp_path):
    log = tmp_path / "rank0.out"
    log.write_text("submitit INFO (2026-01-01 00:00:00,000) - Starting\nstep 1\n")
    asked, out = [], []
    stop = threading.Event()

    def writer():
        for i in range(2, 6):
            time.sleep(0.05)
            with open(log, "a") as f:
                f.write(f"step {i}\n")
        stop.set()

    def done():
        asked.append(time.monotonic())
        return stop.is_set()

    threading.Thread(target=writer).start()
    follow(log, done, out.append, poll_s=0.01, backoff=Backoff(first_s=0.1, factor=1, max_s=0.1))
    text = "".join(out)
    assert text == "".join(f"step {i}\n" for i in range(1, 6))
    assert len(asked) < 15  # about one question per 0.1 s, not one per read
