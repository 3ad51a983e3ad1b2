#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <thread>
#include <vector>

#include "shoal/event_ring.hpp"

using namespace shoal;

namespace {
struct Region {
  explicit Region(std::size_t rings, std::size_t cap) {
    size = EventRings::bytes_for(rings, cap);
    base = std::aligned_alloc(64, (size + 63) / 64 * 64);
    std::memset(base, 0, size);
    view = EventRings::format(base, size, rings, cap);
  }
  ~Region() { std::free(base); }
  void* base;
  std::size_t size;
  EventRings view;
};

TaskEvent ev(std::uint64_t task, std::int64_t took) {
  TaskEvent e;
  e.task = task;
  e.start = 1000;
  e.end = 1000 + took;
  return e;
}
}  // namespace

TEST(EventRing, RecordsComeOutInOrder) {
  Region r(2, 8);
  for (std::uint64_t i = 1; i <= 5; ++i) EXPECT_TRUE(r.view.record(1, ev(i, 10)));
  std::vector<TaskEvent> out;
  EXPECT_EQ(r.view.drain(0, out), 0u);
  EXPECT_EQ(r.view.drain(1, out), 5u);
  for (std::uint64_t i = 0; i < 5; ++i) EXPECT_EQ(out[i].task, i + 1);
  EXPECT_EQ(r.view.counters(1).tasks, 5u);
  EXPECT_EQ(r.view.counters(1).busy_ns, 50u);
}

TEST(EventRing, AFullRingDropsAndCountsButCountersStayExact) {
  Region r(1, 4);
  int ok = 0;
  for (std::uint64_t i = 1; i <= 10; ++i) ok += r.view.record(0, ev(i, 1 << 20));
  EXPECT_EQ(ok, 4);
  const RingCounters c = r.view.counters(0);
  EXPECT_EQ(c.tasks, 10u);
  EXPECT_EQ(c.dropped, 6u);
  EXPECT_EQ(c.busy_ns, 10u << 20);
  EXPECT_EQ(c.hist[20], 10u);
  std::vector<TaskEvent> out;
  EXPECT_EQ(r.view.drain(0, out), 4u);
  EXPECT_TRUE(r.view.record(0, ev(11, 1)));  // room again
}

TEST(EventRing, AttachChecksTheRegion) {
  Region r(3, 16);
  EventRings again = EventRings::attach(r.base, r.size);
  EXPECT_EQ(again.rings(), 3u);
  EXPECT_EQ(again.capacity(), 16u);
  std::vector<unsigned char> junk(4096, 0xab);
  EXPECT_THROW(EventRings::attach(junk.data(), junk.size()), std::exception);
  EXPECT_THROW(EventRings::attach(r.base, 64), std::exception);
}

TEST(EventRing, DurationBuckets) {
  EXPECT_EQ(duration_bucket(0), 0u);
  EXPECT_EQ(duration_bucket(1), 0u);
  EXPECT_EQ(duration_bucket(2), 1u);
  EXPECT_EQ(duration_bucket(1023), 9u);
  EXPECT_EQ(duration_bucket(1024), 10u);
  EXPECT_EQ(duration_bucket(~0ull), histogram_buckets - 1);
}

// One producer, one consumer draining concurrently: what comes out is
// exactly what went in, minus what was counted as dropped (TSan checks the
// handover).
TEST(EventRing, ConcurrentProducerAndConsumerLoseNothingUncounted) {
  for (std::size_t cap : {4u, 64u, 4096u}) {
    Region r(1, cap);
    constexpr std::uint64_t n = 200000;
    std::atomic<bool> done{false};
    std::vector<TaskEvent> out;
    std::thread consumer([&] {
      while (!done.load(std::memory_order_acquire)) r.view.drain(0, out);
      r.view.drain(0, out);
    });
    std::uint64_t dropped = 0;
    for (std::uint64_t i = 1; i <= n; ++i) dropped += !r.view.record(0, ev(i, 1));
    done.store(true, std::memory_order_release);
    consumer.join();
    EXPECT_EQ(out.size() + dropped, n);
    EXPECT_EQ(r.view.counters(0).dropped, dropped);
    EXPECT_EQ(r.view.counters(0).tasks, n);
    for (std::size_t i = 1; i < out.size(); ++i) ASSERT_LT(out[i - 1].task, out[i].task);
  }
}
