"""Lambdas, closures and functions defined right here in __main__ run in
shoal's worker processes -- and no ``if __name__ == "__main__":`` guard is
needed: workers are forked from this process (fresh interpreters where a
fork is not safe) and never re-run this script; what they need travels by
value (cloudpickle, cached per function).

    python examples/lambdas_and_closures.py
"""
import shoal

offset = 100


def make_scaler(factor):
    def scale(x):  # a closure over `factor` and the global `offset`
        return x * factor + offset
    return scale


class Counter:  # a class defined in __main__ travels by value too
    def __init__(self, start):
        self.start = start

    def count(self, n):
        return self.start + n


with shoal.Pool(2) as pool:
    print("lambda:   ", pool.map(lambda x: x * x, range(8)))
    print("closure:  ", pool.map(make_scaler(3), range(8)))
    print("starmap:  ", pool.starmap(lambda a, b: a - b, [(10, 1), (20, 2), (30, 3)]))
    print("instance: ", pool.apply(Counter(40).count, (2,)))

with shoal.Executor(max_workers=2) as ex:
    fut = ex.submit(lambda n: sum(i * i for i in range(n)), 1000)
    print("executor: ", fut.result())
