"""engine.launch: the one start/poll/kill of a local run, for the job queue's forked job processes and a
search's child runs in fresh interpreters alike (the Ray side runs for real in test_ray and test_autocompress)."""
import multiprocessing
import operator
import os
import time

import psutil
import pytest

from engine.launch.local import ProcessHandle, start_interpreter


def _wait_for(pred, what: str, timeout: float = 60):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if v := pred():
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE   # dead, waiting for a reaper
    except psutil.NoSuchProcess:
        return True


@pytest.mark.fast
def test_a_fresh_interpreter_run_reports_its_exit_status_and_is_killed_with_what_it_started(tmp_path):
    log = tmp_path / "child" / "log.txt"
    done = start_interpreter(operator.add, (2, 1), {}, log)   # what the function returns is the exit status
    _wait_for(lambda: done.poll() is not None, "the run to end")
    assert done.poll() == 3
    assert log.is_file()   # its output goes to the log, folder made

    running = start_interpreter(os.system, ("sleep 60",), {}, log)   # a shell that starts a sleep: a grandchild
    grandchild = _wait_for(lambda: [p for p in psutil.Process(running.proc.pid).children(recursive=True)
                                    if p.name() == "sleep"], "the run's own child")[0]
    try:
        assert running.poll() is None
        running.kill()
        assert running.poll() == -9
        assert _wait_for(lambda: _gone(grandchild.pid), "the grandchild to die with its group", timeout=10)
    finally:
        if not _gone(grandchild.pid):   # this test failed: leave no sleep behind
            grandchild.kill()


def _own_group_then_sleep() -> None:
    os.setsid()   # as a job process does
    time.sleep(60)


@pytest.mark.fast
def test_a_forked_job_process_is_polled_and_killed_through_the_same_handle():
    proc = multiprocessing.get_context("fork").Process(target=_own_group_then_sleep)
    proc.start()
    handle = ProcessHandle(proc)
    _wait_for(lambda: os.getpgid(proc.pid) == proc.pid, "the process to lead its own group")
    assert handle.poll() is None
    handle.kill()
    assert handle.poll() == -9 and not proc.is_alive()
