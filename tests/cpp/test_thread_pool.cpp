// The work-stealing deque and the thread pool: contract and stress.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <chrono>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "shoal/check.hpp"
#include "shoal/detail/wsq.hpp"
#include "shoal/thread_pool.hpp"

using shoal::ThreadPool;
using shoal::detail::WorkStealingDeque;

TEST(WorkStealingDeque, OwnerIsLifoThiefIsFifoAndGrows) {
  WorkStealingDeque<std::intptr_t*> q(2);  // tiny: forces several growths
  std::vector<std::intptr_t> items(100);
  for (auto& x : items) q.push(&x);
  EXPECT_EQ(q.steal(), &items[0]);
  EXPECT_EQ(q.steal(), &items[1]);
  EXPECT_EQ(q.pop(), &items[99]);
  EXPECT_EQ(q.pop(), &items[98]);
  int left = 0;
  while (q.pop() != nullptr) ++left;
  EXPECT_EQ(left, 96);
  EXPECT_TRUE(q.empty());
  EXPECT_EQ(q.pop(), nullptr);
  EXPECT_EQ(q.steal(), nullptr);
}

// The owner pushes and pops while thieves, released together by a barrier,
// steal: every element comes out exactly once.
TEST(WorkStealingDeque, StressEveryElementExactlyOnce) {
  for (int thieves : {1, 3, 7}) {
    constexpr int kItems = 20000;
    WorkStealingDeque<int*> q(4);
    std::vector<int> items(kItems);
    std::vector<std::atomic<int>> seen(kItems);
    std::atomic<bool> done{false};
    std::barrier start(thieves + 1);
    auto take = [&](int* p) { seen[static_cast<std::size_t>(p - items.data())].fetch_add(1); };
    std::vector<std::thread> ts;
    for (int t = 0; t < thieves; ++t)
      ts.emplace_back([&] {
        start.arrive_and_wait();
        while (!done.load(std::memory_order_acquire) || !q.empty())
          if (int* p = q.steal()) take(p);
      });
    start.arrive_and_wait();
    for (int i = 0; i < kItems; ++i) {
      q.push(&items[static_cast<std::size_t>(i)]);
      if (i % 3 == 0)
        if (int* p = q.pop()) take(p);
    }
    while (int* p = q.pop()) take(p);
    done.store(true, std::memory_order_release);
    for (auto& t : ts) t.join();
    for (int i = 0; i < kItems; ++i) ASSERT_EQ(seen[static_cast<std::size_t>(i)].load(), 1) << i;
  }
}

TEST(ThreadPool, RunsEverySubmittedTask) {
  ThreadPool pool(3);
  EXPECT_EQ(pool.size(), 3);
  std::atomic<int> count{0};
  for (int i = 0; i < 1000; ++i) pool.submit([&] { count.fetch_add(1); });
  pool.join();
  EXPECT_EQ(count.load(), 1000);
}

TEST(ThreadPool, AsyncReturnsValuesAndExceptions) {
  ThreadPool pool(2);
  auto a = pool.async([] { return 6 * 7; });
  auto b = pool.async([]() -> int { throw std::runtime_error("boom"); });
  EXPECT_EQ(a.get(), 42);
  EXPECT_THROW(b.get(), std::runtime_error);
}

TEST(ThreadPool, WorkerIndexAndCurrent) {
  ThreadPool pool(2);
  EXPECT_EQ(pool.worker_index(), -1);
  EXPECT_EQ(ThreadPool::current(), nullptr);
  auto f = pool.async([&] { return std::make_pair(pool.worker_index(), ThreadPool::current()); });
  auto [index, current] = f.get();
  EXPECT_GE(index, 0);
  EXPECT_LT(index, 2);
  EXPECT_EQ(current, &pool);
}

TEST(ThreadPool, TasksSubmittedByWorkersRunToo) {
  std::atomic<int> count{0};
  {
    ThreadPool pool(2);
    for (int i = 0; i < 50; ++i)
      pool.submit([&] {
        for (int j = 0; j < 20; ++j) pool.submit([&] { count.fetch_add(1); });
      });
  }  // destructor: every queued task still runs
  EXPECT_EQ(count.load(), 1000);
}

TEST(ThreadPool, StopRefusesWorkAndJoinFromWorkerIsAnError) {
  ThreadPool pool(1);
  auto f = pool.async([&] {
    try {
      pool.join();
    } catch (const shoal::Error& e) {
      return std::string(e.what());
    }
    return std::string();
  });
  EXPECT_NE(f.get().find("own workers"), std::string::npos);
  pool.stop();
  EXPECT_TRUE(pool.stopped());
  EXPECT_THROW(pool.submit([] {}), shoal::Error);
  pool.join();
  pool.join();  // idempotent
}

TEST(ThreadPool, BadArguments) {
  EXPECT_THROW(ThreadPool(-1), shoal::Error);
  ThreadPool empty(0);
  EXPECT_THROW(empty.submit([] {}), shoal::Error);
  ThreadPool one(1);
  EXPECT_THROW(one.submit(nullptr), shoal::Error);
}

TEST(ThreadPool, StartAndExitHooksRunOncePerWorker) {
  std::atomic<int> started{0}, exited{0};
  std::vector<std::atomic<int>> per(4);
  {
    ThreadPool pool(
        4, shoal::Pinning::none, [&](int i) { started.fetch_add(1); per[static_cast<std::size_t>(i)]++; },
        [&](int) { exited.fetch_add(1); });
    pool.submit([] {});
  }
  EXPECT_EQ(started.load(), 4);
  EXPECT_EQ(exited.load(), 4);
  for (auto& p : per) EXPECT_EQ(p.load(), 1);
}

TEST(ThreadPool, PinningParsesAndPinnedPoolsWork) {
  EXPECT_EQ(shoal::parse_pinning(nullptr), shoal::Pinning::none);
  EXPECT_EQ(shoal::parse_pinning("close"), shoal::Pinning::compact);
  EXPECT_EQ(shoal::parse_pinning("spread"), shoal::Pinning::spread);
  EXPECT_THROW(shoal::parse_pinning("everywhere"), shoal::Error);
  for (auto pin : {shoal::Pinning::compact, shoal::Pinning::spread}) {
    ThreadPool pool(3, pin);
    std::atomic<int> n{0};
    for (int i = 0; i < 30; ++i) pool.submit([&] { n++; });
    pool.join();
    EXPECT_EQ(n.load(), 30);
  }
}

TEST(ThreadPool, GlobalPoolFollowsShoalNumThreads) {
  // The global pool is sized once per process: check the rule, not the env.
  const int c = ThreadPool::default_concurrency();
  EXPECT_GE(c, 1);
  EXPECT_EQ(ThreadPool::global().size(), c - 1);
  EXPECT_EQ(&ThreadPool::global_for(1), &ThreadPool::global());
  EXPECT_EQ(ThreadPool::global_for(c + 3).size(), c + 2);
}

// Many external threads, released together, hammer submit() while workers steal.
TEST(ThreadPool, StressConcurrentSubmitters) {
  constexpr int kSubmitters = 6, kEach = 2000;
  ThreadPool pool(3);
  std::atomic<long> sum{0};
  std::barrier start(kSubmitters);
  std::vector<std::thread> ts;
  for (int t = 0; t < kSubmitters; ++t)
    ts.emplace_back([&, t] {
      start.arrive_and_wait();
      for (int i = 0; i < kEach; ++i)
        pool.submit([&sum, v = t * kEach + i] { sum.fetch_add(v, std::memory_order_relaxed); });
    });
  for (auto& t : ts) t.join();
  pool.join();
  const long n = long{kSubmitters} * kEach;
  EXPECT_EQ(sum.load(), n * (n - 1) / 2);
}

#include <sys/wait.h>
#include <unistd.h>

// A pool built before fork() exists in the child as memory only: its threads
// stayed in the parent. The child must be able to drop it (seen before the
// fix: SIGSEGV in pthread_join, when a forked Python child's garbage collector
// freed a threads-backend pool), and submit() must say why it cannot run.
// The parent's pool is untouched by the child.
TEST(ThreadPool, AForkedChildDropsTheParentsPoolAndCannotSubmitToIt) {
#if defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "TSan does not support fork() with threads running";
#elif defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "GCC's ASan allocator is not fork-safe with threads running (see ParallelFork)";
#else
  auto pool = std::make_unique<ThreadPool>(3);
  std::atomic<int> ran{0};
  for (int i = 0; i < 100; ++i) pool->submit([&ran] { ran.fetch_add(1); });
  while (ran.load() < 100) std::this_thread::yield();
  EXPECT_FALSE(pool->forked_away());
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    int code = 0;
    if (!pool->forked_away()) code |= 1;
    try {
      pool->submit([] {});
      code |= 2;  // accepted: nobody would ever run it
    } catch (const shoal::Error& e) {
      if (std::string(e.what()).find("forked") == std::string::npos) code |= 4;
    }
    pool->join();   // returns: nothing to join here
    pool.reset();   // neither joins nor terminates
    ThreadPool fresh(2);  // the child's own pools work
    std::atomic<int> n{0};
    for (int i = 0; i < 10; ++i) fresh.submit([&n] { n.fetch_add(1); });
    fresh.join();
    if (n.load() != 10) code |= 8;
    _exit(code);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child died of signal " << WTERMSIG(status);
  EXPECT_EQ(WEXITSTATUS(status), 0);
  for (int i = 0; i < 100; ++i) pool->submit([&ran] { ran.fetch_add(1); });
  pool->join();
  EXPECT_EQ(ran.load(), 200);
#endif
}
