"""The course's 2D integration of sin(x+y) over [0, pi]^2 as a native kernel:
a numba cfunc over a range of x-rows, run on every core by shoal.parallel_reduce
with the GIL released. Compare with the course's numba/f2py/OpenMP versions.

    python examples/integration_numba_kernel.py [n] [threads]
"""

import math
import sys
from time import perf_counter

import numpy as np
from numba import cfunc, types

import shoal

n = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
threads = int(sys.argv[2]) if len(sys.argv) > 2 else None  # None: all this job's cores


# double kernel(int64 begin, int64 end, double* params): the partial sum of rows [begin, end)
@cfunc(types.float64(types.int64, types.int64, types.CPointer(types.float64)))
def rows(begin, end, params):
    n = int(params[0])
    h = params[1]
    mysum = 0.0
    for i in range(begin, end):
        x = h * (i + 0.5)
        for j in range(n):
            y = h * (j + 0.5)
            mysum += math.sin(x + y)
    return mysum


if __name__ == "__main__":
    h = math.pi / n
    params = np.array([n, h])  # ctx: the kernel gets a pointer to its data
    starttime = perf_counter()
    integral = shoal.parallel_reduce(n, rows, params, threads=threads) * h * h
    endtime = perf_counter()
    print("Integral value is %e, Error is %e" % (integral, abs(integral - 0.0)))
    print("Time spent: %.2f sec" % (endtime - starttime))
    # Same sum, bit for bit, whatever the number of threads:
    a = shoal.parallel_reduce(n, rows, params, threads=1, deterministic=True)
    b = shoal.parallel_reduce(n, rows, params, deterministic=True)
    print("deterministic: 1 thread and all threads agree bit for bit:", a == b)
