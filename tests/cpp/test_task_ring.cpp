// TaskRing / PoolChannel / WorkerSupervisor: what goes in comes out, exactly,
// under real concurrency (threads started behind a barrier) and across real
// processes; corrupt rings are errors, never out-of-bounds reads.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "shoal/check.hpp"
#include "shoal/pool_channel.hpp"
#include "shoal/task_ring.hpp"
#include "shoal/worker_supervisor.hpp"

using shoal::FrameHeader;
using shoal::FrameKind;
using shoal::RingControl;
using shoal::TaskRing;

namespace {

struct LocalRing {
  explicit LocalRing(std::size_t cap) : data(cap) {
    ctl = std::make_unique<RingControl>();
    TaskRing::initialize(ctl.get(), cap);
    ring = TaskRing(ctl.get(), data.data());
  }
  std::unique_ptr<RingControl> ctl;
  std::vector<unsigned char> data;
  TaskRing ring;
};

// Payload of frame `id`: deterministic bytes of a deterministic length.
std::vector<unsigned char> payload_of(std::uint64_t id, std::size_t max_len) {
  std::mt19937_64 rng(id * 0x9e3779b97f4a7c15ull + 1);
  std::size_t len = max_len == 0 ? 0 : rng() % (max_len + 1);
  std::vector<unsigned char> p(len);
  for (auto& b : p) b = static_cast<unsigned char>(rng());
  return p;
}

bool pop_into(TaskRing& r, FrameHeader& h, std::vector<unsigned char>& out) {
  return r.try_pop(h, [&](const FrameHeader& hh) {
    out.resize(hh.length);
    return out.data();
  });
}

}  // namespace

TEST(TaskRing, RejectsBadCapacity) {
  RingControl ctl;
  EXPECT_THROW(TaskRing::initialize(&ctl, 1000), shoal::Error);
  EXPECT_THROW(TaskRing::initialize(&ctl, 64), shoal::Error);
}

TEST(TaskRing, PushPopRoundTripAndWrapAround) {
  LocalRing lr(256);
  TaskRing& r = lr.ring;
  std::vector<unsigned char> out;
  FrameHeader h;
  EXPECT_FALSE(pop_into(r, h, out));
  // 37-byte payloads straddle the end of the buffer again and again.
  for (std::uint64_t id = 1; id < 500; ++id) {
    auto p = payload_of(id, 37);
    ASSERT_TRUE(r.try_push(id, FrameKind::Call, 0, p.data(), p.size()));
    ASSERT_TRUE(pop_into(r, h, out));
    EXPECT_EQ(h.task_id, id);
    EXPECT_EQ(h.kind, static_cast<std::uint32_t>(FrameKind::Call));
    EXPECT_EQ(out, p);
  }
  EXPECT_TRUE(r.empty());
}

TEST(TaskRing, QueuedCountsFramesNotTakenYet) {
  LocalRing r(1024);
  const unsigned char byte = 1;
  EXPECT_EQ(r.ring.queued(), 0u);
  for (std::uint64_t id = 1; id <= 3; ++id)
    ASSERT_TRUE(r.ring.try_push(id, FrameKind::Call, 0, &byte, 1));
  EXPECT_EQ(r.ring.queued(), 3u);
  FrameHeader h;
  std::vector<unsigned char> out;
  ASSERT_TRUE(pop_into(r.ring, h, out));
  EXPECT_EQ(r.ring.queued(), 2u);
  // A consumer that scribbles a count beyond the producer's never makes it wrap.
  r.ctl->frames_out.store(100);
  EXPECT_EQ(r.ring.queued(), 0u);
  r.ring.reset();
  EXPECT_EQ(r.ring.queued(), 0u);
}

TEST(TaskRing, FullRingRefusesThenAcceptsAfterPop) {
  LocalRing lr(256);
  TaskRing& r = lr.ring;
  std::vector<unsigned char> p(40, 7);
  int pushed = 0;
  while (r.try_push(static_cast<std::uint64_t>(pushed + 1), FrameKind::Result, 0, p.data(), p.size()))
    ++pushed;
  EXPECT_EQ(pushed, 256 / static_cast<int>(shoal::frame_footprint(40)));
  std::vector<unsigned char> out;
  FrameHeader h;
  ASSERT_TRUE(pop_into(r, h, out));
  EXPECT_EQ(h.task_id, 1u);
  EXPECT_TRUE(r.try_push(99, FrameKind::Result, 0, p.data(), p.size()));
  EXPECT_THROW(r.try_push(1, FrameKind::Call, 0, p.data(), r.max_payload() + 1), shoal::Error);
}

TEST(TaskRing, CorruptionIsAnErrorNotACrash) {
  LocalRing lr(256);
  TaskRing& r = lr.ring;
  std::vector<unsigned char> p(16, 1), out;
  ASSERT_TRUE(r.try_push(5, FrameKind::Call, 0, p.data(), p.size()));
  lr.data[16] ^= 0xff;  // scribble on the header's length
  FrameHeader h;
  EXPECT_THROW(pop_into(r, h, out), shoal::Error);
  lr.ctl->tail.store(1u << 20);  // positions out of range
  EXPECT_THROW(pop_into(r, h, out), shoal::Error);
}

// One producer thread, one consumer thread, started behind a barrier; sizes
// swept from tiny rings (constant wrap-around and full-ring waits) to large.
class RingStress : public ::testing::TestWithParam<std::tuple<std::size_t, std::size_t>> {};

TEST_P(RingStress, EverythingArrivesExactlyOnceInOrder) {
  auto [capacity, max_len] = GetParam();
  LocalRing lr(capacity);
  TaskRing& r = lr.ring;
  const std::uint64_t n = capacity <= 1024 ? 20000 : 50000;
  std::barrier start(2);
  std::thread producer([&] {
    start.arrive_and_wait();
    for (std::uint64_t id = 1; id <= n; ++id) {
      auto p = payload_of(id, max_len);
      while (!r.try_push(id, FrameKind::Call, 0, p.data(), p.size())) {
        r.notify_consumer();
        r.wait_writable(p.size(), 1'000'000, 2'000);
      }
      r.notify_consumer();
    }
  });
  std::uint64_t expect = 1;
  std::vector<unsigned char> out;
  start.arrive_and_wait();
  while (expect <= n) {
    FrameHeader h;
    if (!pop_into(r, h, out)) {
      r.wait_readable(1'000'000, 2'000);
      continue;
    }
    ASSERT_EQ(h.task_id, expect);
    ASSERT_EQ(out, payload_of(expect, max_len));
    ++expect;
  }
  producer.join();
  EXPECT_TRUE(r.empty());
}

INSTANTIATE_TEST_SUITE_P(Sizes, RingStress,
                         ::testing::Combine(::testing::Values(256, 1024, 65536),
                                            ::testing::Values(0, 1, 100, 200)));

// Sleeping consumers are always woken: a consumer that only ever sleeps (no
// spin) must still see every frame (no lost wake-up in the futex protocol).
TEST(TaskRing, NoLostWakeupsWithoutSpinning) {
  LocalRing lr(1024);
  TaskRing& r = lr.ring;
  const std::uint64_t n = 20000;
  std::barrier start(2);
  std::thread producer([&] {
    start.arrive_and_wait();
    for (std::uint64_t id = 1; id <= n; ++id) {
      while (!r.try_push(id, FrameKind::Call, 0, &id, sizeof id)) r.wait_writable(8, -1, 0);
      r.notify_consumer();
    }
  });
  start.arrive_and_wait();
  std::uint64_t got = 0, v = 0;
  while (got < n) {
    FrameHeader h;
    if (!r.try_pop(h, [&](const FrameHeader&) { return reinterpret_cast<unsigned char*>(&v); })) {
      r.wait_readable(-1, 0);  // no timeout: a lost wake-up hangs (the ctest timeout fails it)
      continue;
    }
    ASSERT_EQ(v, ++got);
  }
  producer.join();
}

// A stop (shutdown) raised before the consumer announced its sleep must still
// end the wait: without the flag check this sleeps forever (ctest timeout).
TEST(TaskRing, StopFlagEndsAWaitThatMissedTheWake) {
  LocalRing lr(1024);
  std::atomic<std::uint32_t> stop{1};
  lr.ring.wake_consumer();  // the wake lands before anyone sleeps: it is lost
  EXPECT_FALSE(lr.ring.wait_readable(-1, 0, &stop));
  // And a stop raised while the consumer sleeps wakes it.
  std::atomic<std::uint32_t> later{0};
  std::thread waker([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    later.store(1, std::memory_order_seq_cst);
    lr.ring.wake_consumer();
  });
  EXPECT_FALSE(lr.ring.wait_readable(-1, 0, &later));
  waker.join();
}

TEST(PoolChannel, DoorbellWakesDriverAndCrossesProcesses) {
  auto ch = shoal::PoolChannel::create(2, 4096);
  EXPECT_EQ(ch.slots(), 2u);
  const std::uint64_t n = 5000;
  pid_t child = fork();  // test process has no other threads here
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Worker: echo every task of slot 1 back as a result, plus one.
    TaskRing in = ch.task_ring(1), out = ch.result_ring(1);
    std::uint64_t seen = 0;
    while (seen < n) {
      FrameHeader h;
      std::uint64_t v = 0;
      if (!in.try_pop(h, [&](const FrameHeader&) { return reinterpret_cast<unsigned char*>(&v); })) {
        in.wait_readable(-1, 10'000);
        continue;
      }
      ++seen;
      v += 1;
      while (!out.try_push(h.task_id, FrameKind::Result, 0, &v, sizeof v)) out.wait_writable(8, -1, 0);
      ch.notify_driver();
    }
    _exit(0);
  }
  TaskRing in = ch.task_ring(1), out = ch.result_ring(1);
  std::uint64_t sent = 0, received = 0;
  while (received < n) {
    while (sent < n && sent - received < 64) {
      std::uint64_t v = sent * 3;
      if (!in.try_push(sent + 1, FrameKind::Call, 0, &v, sizeof v)) break;
      ++sent;
      in.notify_consumer();
    }
    std::uint32_t bell = ch.doorbell();
    FrameHeader h;
    std::uint64_t v = 0;
    bool any = false;
    while (out.try_pop(h, [&](const FrameHeader&) { return reinterpret_cast<unsigned char*>(&v); })) {
      ++received;
      ASSERT_EQ(h.task_id, received);
      ASSERT_EQ(v, (received - 1) * 3 + 1);
      any = true;
    }
    if (!any) ch.wait_driver(bell, 1'000'000'000, 0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

TEST(PoolChannel, PickSlotPrefersAnAwakeWorkerOfShortTasksWithLittleQueued) {
  auto ch = shoal::PoolChannel::create(3, 4096);
  constexpr std::uint64_t short_task = 20'000;  // ns
  for (std::size_t i = 0; i < 3; ++i) ch.slot(i).task_ns.store(1'000);
  // Slot 0: a real consumer asleep on its futex (no spinning).
  std::atomic<bool> got{false};
  std::thread sleeper([&] { got = ch.task_ring(0).wait_readable(-1, 0, ch.shutdown_flag()); });
  while (ch.slot(0).task_ctl.consumer_waiting.load() == 0) std::this_thread::yield();
  // Slot 1: awake and empty; slot 2: awake with one frame not taken yet.
  const unsigned char byte = 7;
  ASSERT_TRUE(ch.task_ring(2).try_push(1, FrameKind::Call, 0, &byte, 1));
  EXPECT_EQ(ch.pick_slot(4, short_task), 1);
  // Slot 1 runs a task that started a second ago, far past twice its
  // average: it may be a long one, nothing queues behind it.
  ch.slot(1).started_ns.store(shoal::detail::monotonic_ns() - 1'000'000'000);
  ch.slot(1).current_task.store(5);
  EXPECT_EQ(ch.pick_slot(4, short_task), 2);
  // Nothing queued allowed: slot 2 is out, slot 1 runs long, slot 0 sleeps;
  // the least loaded is the sleeper (nothing queued, nothing running).
  EXPECT_EQ(ch.pick_slot(0, short_task), -1 - 0);
  ch.slot(1).current_task.store(0);
  EXPECT_EQ(ch.pick_slot(0, short_task), 1);
  // A task younger than twice the average: the worker is still "short".
  ch.slot(1).task_ns.store(10'000'000'000);
  ch.slot(1).started_ns.store(shoal::detail::monotonic_ns());
  ch.slot(1).current_task.store(6);
  EXPECT_EQ(ch.pick_slot(4, 100'000'000'000), 1);
  // Tasks of unknown or long duration: not a worker of short tasks.
  ch.slot(1).task_ns.store(0);
  EXPECT_EQ(ch.pick_slot(4, short_task), 2);
  ch.slot(2).task_ns.store(short_task);
  EXPECT_EQ(ch.pick_slot(4, short_task), -1 - 0);
  // The least loaded, when no worker fits: frames not taken + a running task.
  ASSERT_TRUE(ch.task_ring(0).try_push(2, FrameKind::Call, 0, &byte, 1));
  ASSERT_TRUE(ch.task_ring(0).try_push(3, FrameKind::Call, 0, &byte, 1));
  EXPECT_EQ(ch.pick_slot(4, short_task), -1 - 1);  // loads 2, 1, 1: the first of the 1s
  ch.task_ring(0).notify_consumer();
  sleeper.join();
  EXPECT_TRUE(got.load());
}

TEST(PoolChannel, PickSlotFillsTheFirstAwakeWorkerBeforeTheNext) {
  auto ch = shoal::PoolChannel::create(2, 4096);
  for (std::size_t i = 0; i < 2; ++i) ch.slot(i).task_ns.store(1'000);
  const unsigned char byte = 7;
  for (std::uint64_t id = 1; id <= 3; ++id) {
    EXPECT_EQ(ch.pick_slot(3, 20'000), 0);  // not the emptier slot 1
    ASSERT_TRUE(ch.task_ring(0).try_push(id, FrameKind::Call, 0, &byte, 1));
  }
  EXPECT_EQ(ch.pick_slot(3, 20'000), 0);
  ASSERT_TRUE(ch.task_ring(0).try_push(4, FrameKind::Call, 0, &byte, 1));
  EXPECT_EQ(ch.pick_slot(3, 20'000), 1);  // slot 0 has more than 3 queued
}

TEST(PoolChannel, SetCurrentKeepsTheStartAndAnAverageTaskTime) {
  auto ch = shoal::PoolChannel::create(1, 4096);
  EXPECT_EQ(ch.slot(0).task_ns.load(), 0u);
  ch.set_current(0, 1);
  const std::uint64_t start = ch.slot(0).started_ns.load();
  EXPECT_EQ(ch.slot(0).current_task.load(), 1u);
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  ch.set_current(0, 0);  // task 1 took >= 2 ms: the first sample is the average
  const std::uint64_t first = ch.slot(0).task_ns.load();
  EXPECT_GE(first, 2'000'000u);
  EXPECT_GE(ch.slot(0).started_ns.load(), start + first);
  EXPECT_EQ(ch.slot(0).current_task.load(), 0u);
  ch.set_current(0, 0);  // idle time between tasks is not a task
  EXPECT_EQ(ch.slot(0).task_ns.load(), first);
  ch.set_current(0, 2);
  ch.set_current(0, 3);  // task 2 took ~0: the average moves down by about 1/8
  const std::uint64_t second = ch.slot(0).task_ns.load();
  EXPECT_LT(second, first);
  EXPECT_GE(second, first - first / 8 - 1);
  ch.reset_slot(0);
  EXPECT_EQ(ch.slot(0).task_ns.load(), 0u);
  EXPECT_THROW(ch.set_current(1, 1), shoal::Error);
}

TEST(PoolChannel, AttachValidatesTheDescriptor) {
  int fd = memfd_create("not-a-channel", MFD_CLOEXEC);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 8192), 0);
  EXPECT_THROW(shoal::PoolChannel::attach_fd(fd), shoal::Error);
  EXPECT_THROW(shoal::PoolChannel::create(0, 4096), shoal::Error);
}

TEST(WorkerSupervisor, ReportsExitCodesAndSignalsAtOnce) {
  auto ch = shoal::PoolChannel::create(1, 4096);
  std::atomic<int> rung{0};
  shoal::WorkerSupervisor sup([&] { rung.fetch_add(1); });
  std::vector<std::string> env{"PATH=/usr/bin:/bin"};
  pid_t a = sup.spawn(0, {"/bin/sh", "-c", "exit 3"}, env, ch.fd());
  pid_t b = sup.spawn(1, {"/bin/sh", "-c", "exec sleep 30"}, env, ch.fd());
  ASSERT_GT(a, 0);
  ASSERT_GT(b, 0);
  EXPECT_TRUE(sup.signal(b, SIGKILL));
  std::vector<shoal::WorkerExit> exits;
  for (int i = 0; i < 500 && exits.size() < 2; ++i) {
    auto more = sup.take_exits();
    exits.insert(exits.end(), more.begin(), more.end());
    if (exits.size() < 2) usleep(10'000);
  }
  ASSERT_EQ(exits.size(), 2u);
  for (const auto& e : exits) {
    if (e.pid == a) {
      EXPECT_EQ(e.slot, 0);
      EXPECT_EQ(e.exit_code, 3);
      EXPECT_EQ(e.signal, 0);
    } else {
      EXPECT_EQ(e.pid, b);
      EXPECT_EQ(e.signal, SIGKILL);
    }
  }
  EXPECT_GE(rung.load(), 1);
  EXPECT_EQ(sup.alive(), 0u);
  EXPECT_FALSE(sup.signal(b, SIGKILL));
  EXPECT_THROW(sup.spawn(0, {"/nonexistent/binary"}, env, ch.fd()), shoal::SystemError);
}

TEST(WorkerSupervisor, StopKillsWhatDoesNotLeave) {
  auto ch = shoal::PoolChannel::create(1, 4096);
  shoal::WorkerSupervisor sup(nullptr);
  pid_t p = sup.spawn(0, {"/bin/sh", "-c", "trap '' TERM; exec sleep 30"}, {}, ch.fd());
  sup.stop(0.05);
  EXPECT_EQ(sup.alive(), 0u);
  EXPECT_NE(kill(p, 0), 0);  // reaped: the pid no longer exists
}

TEST(WorkerSupervisor, AdoptsAChildForkedBeforeItStarted) {
  pid_t child = fork();  // no other thread yet: the supervisor starts below
  ASSERT_GE(child, 0);
  if (child == 0) {
    usleep(50'000);
    _exit(5);
  }
  shoal::WorkerSupervisor sup(nullptr);
  sup.adopt(2, child);
  EXPECT_EQ(sup.alive(), 1u);
  std::vector<shoal::WorkerExit> exits;
  for (int i = 0; i < 500 && exits.empty(); ++i) {
    exits = sup.take_exits();
    if (exits.empty()) usleep(10'000);
  }
  ASSERT_EQ(exits.size(), 1u);
  EXPECT_EQ(exits[0].slot, 2);
  EXPECT_EQ(exits[0].pid, child);
  EXPECT_EQ(exits[0].exit_code, 5);
}

// A child forked from a process that runs a supervisor (a multiprocessing
// fork Process of a shoal driver) must not stop, kill or join anything of its
// parent's when it ends: the thread is not there and the workers are not its.
TEST(WorkerSupervisor, AForkedCopyLeavesTheParentsWorkersAlone) {
#if defined(__SANITIZE_THREAD__) || defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "fork with a running thread: see ParallelFork.ChildGetsWorkingPools";
#else
  auto ch = shoal::PoolChannel::create(1, 4096);
  shoal::WorkerSupervisor sup(nullptr);
  pid_t worker = sup.spawn(0, {"/bin/sh", "-c", "exec sleep 30"}, {}, ch.fd());
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    sup.stop(0);  // returns at once, kills nothing
    _exit(sup.alive() == 1 && kill(worker, 0) == 0 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(kill(worker, 0), 0) << "the parent's worker was killed by the forked copy";
  EXPECT_EQ(sup.alive(), 1u);
  sup.stop(0);
  EXPECT_EQ(sup.alive(), 0u);
#endif
}
