// The monitor's per-task cost in a worker, in C++ (no Python around it):
// one EventRings::record into a ring of the default size, with the sampler's
// drain every half lap; and the cost of the clock read a record would add.
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "shoal/detail/futex.hpp"
#include "shoal/event_ring.hpp"
#include "shoal/monitor_file.hpp"

namespace {

struct Ring {
  explicit Ring(std::size_t cap) : size(shoal::EventRings::bytes_for(1, cap)) {
    base = std::aligned_alloc(64, (size + 63) / 64 * 64);
    std::memset(base, 0, size);
    view = shoal::EventRings::format(base, size, 1, cap);
  }
  ~Ring() { std::free(base); }
  std::size_t size;
  void* base;
  shoal::EventRings view;
};

void BM_Record(benchmark::State& state) {
  const auto cap = static_cast<std::size_t>(state.range(0));
  Ring r(cap);
  std::vector<shoal::TaskEvent> out;
  shoal::TaskEvent ev;
  ev.pid = 1;
  std::uint64_t i = 0;
  for (auto _ : state) {
    ev.task = ++i;
    ev.end = static_cast<std::int64_t>(i * 1000);
    benchmark::DoNotOptimize(r.view.record(0, ev));
    if ((i & (cap / 2 - 1)) == 0) {
      state.PauseTiming();
      out.clear();
      r.view.drain(0, out);
      state.ResumeTiming();
    }
  }
}
BENCHMARK(BM_Record)->Arg(32768);

void BM_MonotonicClock(benchmark::State& state) {
  for (auto _ : state) benchmark::DoNotOptimize(shoal::detail::monotonic_ns());
}
BENCHMARK(BM_MonotonicClock);

// What the sampler thread spends per task record it writes to the file.
void BM_DeltaEncode(benchmark::State& state) {
  std::vector<shoal::TaskEvent> ev(4096);
  for (std::size_t k = 0; k < ev.size(); ++k) {
    ev[k].task = k + 1;
    ev[k].start = static_cast<std::int64_t>(k * 3100 + (k * 7919) % 1000);
    ev[k].end = ev[k].start + 1500 + static_cast<std::int64_t>((k * 104729) % 900);
    ev[k].bytes_out = 26;
  }
  const std::string_view raw(reinterpret_cast<const char*>(ev.data()), ev.size() * sizeof ev[0]);
  for (auto _ : state) benchmark::DoNotOptimize(shoal::delta_encode(raw, sizeof ev[0]));
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(ev.size()));
}
BENCHMARK(BM_DeltaEncode);

}  // namespace
BENCHMARK_MAIN();
