"""The course's integration2d_multiprocessing.py, rewritten for shoal.

Each task integrates a block of x-rows of sin(x+y) over [0, pi]^2 and writes
its partial sum into its own slot of a shoal.shared array -- the course's
``multiprocessing.Array('d', ..., lock=False)``, done right: the array travels
to the workers by reference (zero-copy) and the driver reads what they wrote.

    python examples/integration2d_shared.py [n] [workers]
"""
import math
import sys
from time import perf_counter

import shoal

# grid size
n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
# number of worker processes
numprocesses = int(sys.argv[2]) if len(sys.argv) > 2 else shoal.default_workers()


def integration2d_shoal(n, numprocesses, processindex, partial_integrals):
    # interval size (same for X and Y)
    h = math.pi / float(n)
    # cumulative variable
    mysum = 0.0
    # workload for each task
    workload = n / numprocesses
    begin = int(workload * processindex)
    end = int(workload * (processindex + 1))
    # regular integration in the X axis
    for i in range(begin, end):
        x = h * (i + 0.5)
        # regular integration in the Y axis
        for j in range(n):
            y = h * (j + 0.5)
            mysum += math.sin(x + y)
    # written straight into the driver's shared memory
    partial_integrals[processindex] = h**2 * mysum


if __name__ == "__main__":  # kept from the course; shoal itself does not need it
    # partial sum for each task, in shared memory
    partial_integrals = shoal.shared.zeros(numprocesses)

    starttime = perf_counter()
    with shoal.Pool(numprocesses) as pool:
        pool.starmap(integration2d_shoal,
                     [(n, numprocesses, i, partial_integrals) for i in range(numprocesses)])
    integral = float(partial_integrals.sum())
    endtime = perf_counter()

    print("Integral value is %e, Error is %e" % (integral, abs(integral - 0.0)))
    print("Partial sums:", " ".join("%.3e" % p for p in partial_integrals))
    print("Time spent: %.2f sec" % (endtime - starttime))
