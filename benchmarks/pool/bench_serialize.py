"""Where should buffers go out of band? Round trip of one numpy array
(dumps -> bytes cross to the receiver -> loads -> receiver reads it all)
in band vs out of band through a shared segment, per size, medians.

    python benchmarks/pool/bench_serialize.py

The in-band path pays: pickle copy + one copy through the channel (modelled
by bytes(data)) + unpickle copy. The out-of-band path pays: segment create
(shm_open, fallocate, mmap), one copy, attach (shm_open, fstat, mmap), page
faults on first touch, munmap/unlink.
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from shoal import _serialize as S


def once(a: np.ndarray, threshold: int) -> float:
    t0 = time.perf_counter()
    p = S.dumps(a, threshold=threshold)
    wire = bytes(p.data)  # what crosses the ring
    b = S.loads(wire)
    b.sum()  # the receiver touches every page
    del b, p
    return time.perf_counter() - t0


def main() -> None:
    print(f"{'size':>10} {'in band [us]':>13} {'out of band [us]':>17} {'oob/inband':>10}")
    for kib in [4, 16, 32, 64, 128, 256, 1024, 4096, 16384]:
        a = np.ones(kib * 1024 // 8)
        reps = 200 if kib <= 1024 else 30
        inb, oob = [], []
        for _ in range(reps):
            inb.append(once(a, 1 << 62))
            oob.append(once(a, 0))
        i, o = statistics.median(inb) * 1e6, statistics.median(oob) * 1e6
        print(f"{kib:>7} KiB {i:>13.1f} {o:>17.1f} {o / i:>10.2f}")


if __name__ == "__main__":
    main()
