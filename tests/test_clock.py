"""utils/clock.py: a stopped process's pause is not counted as work."""

import os
import signal
import subprocess
import sys
import time

import pytest

from ddpm_lottery.utils.clock import WorkClock

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX job control signals")

# a child that "trains" (marks progress every 10 ms) until 3 s of wall clock have passed, then prints
# its work seconds and its wall seconds
CHILD = """
import time
from ddpm_lottery.utils.clock import WorkClock
with WorkClock() as clock:
    print("ready", flush=True)
    start = time.perf_counter()
    while time.perf_counter() - start < 3.0:
        time.sleep(0.01)
        clock.mark()
print(clock.seconds(), time.perf_counter() - start, flush=True)
"""


def test_the_time_a_process_spent_stopped_is_not_work():
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.3)
        os.kill(child.pid, signal.SIGSTOP)
        time.sleep(2.0)
        os.kill(child.pid, signal.SIGCONT)
        work, wall = (float(v) for v in child.stdout.readline().split())
    finally:
        child.kill()
        child.wait()
    assert wall >= 3.0
    # 2 s of the 3 s (or more) were spent stopped: the work is what remains, less at most a step (10 ms)
    assert work <= wall - 1.9
    assert work > 0.0


def test_without_a_stop_the_work_is_the_wall_clock_and_the_handler_is_put_back():
    before = signal.getsignal(signal.SIGCONT)
    with WorkClock() as clock:
        start = time.perf_counter()
        time.sleep(0.05)
        clock.mark()
        wall = time.perf_counter() - start
    assert clock.seconds() == pytest.approx(wall, abs=0.02)
    assert signal.getsignal(signal.SIGCONT) == before
