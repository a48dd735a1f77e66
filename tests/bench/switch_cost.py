"""What a short thread switch interval costs CPU-bound sync tools.

Two CPU-bound functions run at once on two threads (two sync tools of two
threads, the worst case: they compete for the interpreter all the time),
timed at Python's default interval (5 ms) and at `THREADBOT_TUNE`'s (0.1 ms),
alternately.

    python -m tests.bench.switch_cost [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time


def _work() -> None:
    n = 0
    for i in range(30_000_000):
        n += i


def _both() -> float:
    threads = [threading.Thread(target=_work) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.switch_cost", description=__doc__)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    for _ in range(args.rounds):
        for interval in (0.005, 0.0001):
            sys.setswitchinterval(interval)
            print(f"switch interval {interval * 1e3:g} ms: {_both():.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
