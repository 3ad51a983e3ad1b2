// Fork-join overhead: an empty parallel loop over 2 threads, shoal vs OpenMP,
// plus the same for a small reduction. Run:
//   cmake -S . -B build/bench -G Ninja -DSHOAL_BENCHMARKS=ON -DSHOAL_PYTHON=OFF && cmake --build build/bench
//   build/bench/benchmarks/bench_forkjoin --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <cstdint>
#include <functional>

#include "shoal/parallel.hpp"

#ifdef SHOAL_HAVE_OPENMP
#include <omp.h>
#endif

namespace {

constexpr std::int64_t kIters = 256;

void BM_shoal_empty_parallel_for(benchmark::State& state) {
  shoal::LoopOptions o;
  o.threads = static_cast<int>(state.range(0));
  o.pool = &shoal::ThreadPool::global_for(o.threads);
  o.grain = kIters / o.threads;  // one chunk per thread, as OpenMP's static schedule
  for (auto _ : state)
    shoal::parallel_for(0, kIters, [](std::int64_t i) { benchmark::DoNotOptimize(i); }, o);
}
BENCHMARK(BM_shoal_empty_parallel_for)->Arg(2)->UseRealTime();

void BM_shoal_parallel_reduce(benchmark::State& state) {
  shoal::ReduceOptions o;
  o.threads = static_cast<int>(state.range(0));
  o.pool = &shoal::ThreadPool::global_for(o.threads);
  o.grain = kIters / o.threads;
  for (auto _ : state) {
    long s = shoal::parallel_reduce(0, kIters, 0L, [](std::int64_t i) { return static_cast<long>(i); },
                                    std::plus<>{}, o);
    benchmark::DoNotOptimize(s);
  }
}
BENCHMARK(BM_shoal_parallel_reduce)->Arg(2)->UseRealTime();

#ifdef SHOAL_HAVE_OPENMP
void BM_omp_empty_parallel_for(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  for (auto _ : state) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (std::int64_t i = 0; i < kIters; ++i) benchmark::DoNotOptimize(i);
  }
}
BENCHMARK(BM_omp_empty_parallel_for)->Arg(2)->UseRealTime();

void BM_omp_parallel_reduce(benchmark::State& state) {
  const int threads = static_cast<int>(state.range(0));
  for (auto _ : state) {
    long s = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(+ : s)
    for (std::int64_t i = 0; i < kIters; ++i) s += i;
    benchmark::DoNotOptimize(s);
  }
}
BENCHMARK(BM_omp_parallel_reduce)->Arg(2)->UseRealTime();
#endif

}  // namespace

BENCHMARK_MAIN();
