"""The node launcher's pieces that need no training: when forking is unsafe, how a forked rank
is polled and reaped, where a forked rank's start-up is counted from, and its argv."""
import os
import signal
import threading
import time

import pytest

from hpcorch.train import forked, startup
from hpcorch.train.spawn import wait_all

pytestmark = pytest.mark.timeout(60)


def _fork(then) -> forked.ForkedRank:
    pid = os.fork()
    if pid == 0:  # the child: only os calls, never back into pytest
        try:
            then()
        finally:
            os._exit(0)
    return forked.ForkedRank(pid)


def test_fork_is_refused_while_another_thread_runs():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert "threads are running" in forked.fork_hazard()
    finally:
        stop.set()
        thread.join()


def test_a_forked_rank_reports_its_exit_code_or_signal_like_popen():
    exits = _fork(lambda: os._exit(5))
    assert exits.wait() == 5 and exits.poll() == 5
    sleeper = _fork(lambda: time.sleep(30))
    assert sleeper.poll() is None
    sleeper.kill()
    assert sleeper.wait() == -signal.SIGKILL
    sleeper.kill()  # reaped: its pid may be another process's now, so nothing is sent


def test_one_failing_rank_ends_the_others_with_its_code():
    """wait_all on forked ranks: the failure's code, the sleeping peer terminated."""
    ranks = [_fork(lambda: time.sleep(30)), _fork(lambda: os._exit(7))]
    start = time.monotonic()
    assert wait_all(ranks, grace_s=10) == 7
    assert time.monotonic() - start < 10 and ranks[0].returncode == -signal.SIGTERM


def test_a_forked_rank_counts_its_start_from_the_launcher(monkeypatch):
    monkeypatch.setattr(startup, "_process_start", None)
    own = startup.process_start_time()
    startup.set_process_start(own - 5)
    assert startup.process_start_time() == own - 5
    assert startup.StartupClock().start == own - 5


def _victim_and_peer() -> tuple[forked.ForkedRank, forked.ForkedRank]:
    """A rank that kills itself when told, and a peer that exits 1 as soon as it sees it gone
    (a closed pipe, as gloo sees a closed socket)."""
    read, write = os.pipe()
    go_r, go_w = os.pipe()

    def victim():
        os.close(read)
        os.read(go_r, 1)
        os.kill(os.getpid(), signal.SIGKILL)

    def peer():
        os.read(read, 1)  # EOF: the victim is gone
        os._exit(1)

    killed = _fork(victim)
    os.close(write)
    first = _fork(peer)
    os.close(read)
    os.write(go_w, b"x")
    os.close(go_r)
    os.close(go_w)
    return first, killed


def test_the_rank_killed_is_the_root_cause_not_the_peer_that_fails_because_of_it():
    """Rank 1 is killed and rank 0 exits 1 microseconds later, both before the launcher polls:
    the launcher reports rank 1's 137, woken by SIGCHLD or not."""
    for _ in range(3):
        first, killed = _victim_and_peer()
        assert wait_all([first, killed], grace_s=10) == 128 + signal.SIGKILL
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    try:
        first, killed = _victim_and_peer()
        assert wait_all([first, killed], grace_s=10, pause=forked._until_a_rank_ends) == 128 + signal.SIGKILL
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def test_the_reported_failure_of_ranks_seen_ending_together():
    """A rank killed outright beats the peers that exit 1 or abort because it vanished; an
    abort does not beat a clear error (2); otherwise the lowest rank's, as before."""
    from hpcorch.train.spawn import _root_cause_rank

    def _root_cause(codes):  # the code of the process reported
        rank = _root_cause_rank(codes)
        return None if rank is None else codes[rank]

    assert _root_cause([1, -signal.SIGKILL]) == -signal.SIGKILL
    assert _root_cause([1, -signal.SIGSEGV, -signal.SIGKILL]) == -signal.SIGSEGV
    assert _root_cause([2, -signal.SIGABRT]) == 2 and _root_cause([-signal.SIGABRT, 1]) == -signal.SIGABRT
    assert _root_cause([None, 0, 3]) is None


@pytest.mark.parametrize("value, forks", [(None, True), ("", True), ("1", True), (" 1 ", True), ("0", False)])
def test_fork_ranks_setting(monkeypatch, value, forks):
    from hpcorch.train.spawn import FORK_ENV, fork_ranks

    if value is None:
        monkeypatch.delenv(FORK_ENV, raising=False)
    else:
        monkeypatch.setenv(FORK_ENV, value)
    assert fork_ranks() is forks


@pytest.mark.parametrize("value", ["false", "no", "2", "00", "x" * 500])
def test_a_bad_fork_ranks_value_is_one_line_exit_2_before_the_run_dir(tmp_path, value):
    from conftest import run_cli

    run_dir = tmp_path / "run"
    got = run_cli("train", "jobs/gpt-tiny.yaml", "--nproc", "1", "--run-dir", run_dir,
                  env={"HPCORCH_FORK_RANKS": value})
    assert got.returncode == 2 and "Traceback" not in got.stderr, got.stderr[-2000:]
    (line,) = got.stderr.strip().splitlines()
    assert line.startswith("error: HPCORCH_FORK_RANKS: expected 0 (one interpreter per rank) or 1 ")
    assert len(line) < 400 and not run_dir.exists()
