// Cost of asking "how many CPUs": shoal's full Allocation::detect (affinity, cgroup
// files, environment) and Topology::detect (hwloc) beside the one-number peers.
//   cmake -S . -B build/bench -G Ninja -DSHOAL_BENCHMARKS=ON -DSHOAL_PYTHON=OFF && cmake --build build/bench
//   build/bench/benchmarks/bench_allocation --benchmark_repetitions=5 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>
#include <sched.h>
#include <unistd.h>

#include <thread>

#include "shoal/allocation.hpp"
#include "shoal/topology.hpp"

static void BM_AllocationDetect(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(shoal::Allocation::detect().cpus);
}
BENCHMARK(BM_AllocationDetect);

static void BM_DefaultConcurrencyCached(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(shoal::default_concurrency());
}
BENCHMARK(BM_DefaultConcurrencyCached);

static void BM_TopologyDetectHwloc(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(shoal::Topology::detect().pus);
}
BENCHMARK(BM_TopologyDetectHwloc)->Unit(benchmark::kMillisecond);

static void BM_TopologyDetectSysfs(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(shoal::Topology::detect_from_sysfs("/").pus);
}
BENCHMARK(BM_TopologyDetectSysfs)->Unit(benchmark::kMillisecond);

static void BM_Peer_HardwareConcurrency(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(std::thread::hardware_concurrency());
}
BENCHMARK(BM_Peer_HardwareConcurrency);

static void BM_Peer_SchedGetaffinity(benchmark::State& state) {
  for (auto _ : state) {
    cpu_set_t set;
    sched_getaffinity(0, sizeof set, &set);
    benchmark::DoNotOptimize(CPU_COUNT(&set));
  }
}
BENCHMARK(BM_Peer_SchedGetaffinity);

BENCHMARK_MAIN();
