"""A ctypes program that exits while Python work runs on the bridge's pool.

CPython ends every thread that wants the interpreter back once it has begun to
finalize: it calls pthread_exit() on it. Here that thread is a pool thread of the
bridge, inside a work function written in Python. The process must end normally
(it used to die with SIGABRT), and the work's future must fail as abandoned (which,
unobserved, is reported on stderr).

Usage: python3 exit_with_work_in_flight.py path/to/libasyncbridge.so
"""

import ctypes
import sys
import time

WORKERS = 4

lib = ctypes.CDLL(sys.argv[1])
WORK = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p)
lib.bridge_default.restype = ctypes.c_void_p
lib.bridge_submit.argtypes = [
    ctypes.c_void_p,
    WORK,
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_uint32,
    ctypes.c_void_p,
]
lib.bridge_submit.restype = ctypes.c_int32

running = 0


@WORK
def work(job, arg):
    global running
    running += 1
    while True:  # never returns: the interpreter ends this thread at exit
        time.sleep(0.001)


class SlowTeardown:
    """Finalization clears module globals after it has begun: this releases the
    interpreter for a while then, so the workers ask for it back meanwhile. A second,
    since the test suite runs this beside other programs on a busy machine: a worker
    that has not asked by the time the process ends is not ended, and not reported."""

    def __del__(self):
        time.sleep(1.0)


bridge = lib.bridge_default()
assert bridge, "no bridge"
for _ in range(WORKERS):
    rc = lib.bridge_submit(bridge, work, None, None, 0, None)  # fire and forget
    assert rc == 0, rc
deadline = time.monotonic() + 10
while running < WORKERS and time.monotonic() < deadline:
    time.sleep(0.001)
assert running == WORKERS, running
keep = SlowTeardown()
print("exiting with work in flight", flush=True)
