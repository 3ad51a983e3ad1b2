#include "shoal/task_ring.hpp"

#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <sched.h>
#include <unistd.h>

#include <climits>
#include <new>
#include <string>

namespace shoal {

namespace detail {

void futex_wait(std::atomic<std::uint32_t>* word, std::uint32_t expected,
                std::int64_t timeout_ns) noexcept {
  timespec ts{};
  timespec* tsp = nullptr;
  if (timeout_ns >= 0) {
    ts.tv_sec = static_cast<time_t>(timeout_ns / 1'000'000'000);
    ts.tv_nsec = static_cast<long>(timeout_ns % 1'000'000'000);
    tsp = &ts;
  }
  // EINTR, EAGAIN (value changed) and ETIMEDOUT all mean "look again".
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAIT, expected, tsp, nullptr, 0);
}

void futex_wake(std::atomic<std::uint32_t>* word, int n) noexcept {
  syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(word), FUTEX_WAKE, n, nullptr, nullptr, 0);
}

std::uint64_t monotonic_ns() noexcept {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000u + static_cast<std::uint64_t>(ts.tv_nsec);
}

}  // namespace detail

using detail::futex_wait;
using detail::futex_wake;
using detail::monotonic_ns;

void TaskRing::initialize(RingControl* ctl, std::size_t capacity) {
  SHOAL_CHECK(capacity >= min_capacity && (capacity & (capacity - 1)) == 0,
              "TaskRing capacity must be a power of two >= " + std::to_string(min_capacity) +
                  ", got " + std::to_string(capacity));
  new (ctl) RingControl();
  ctl->capacity = capacity;
}

void TaskRing::copy_in(std::uint64_t pos, const void* src, std::size_t n) noexcept {
  const std::size_t off = static_cast<std::size_t>(pos & (capacity_ - 1));
  const std::size_t first = n < capacity_ - off ? n : capacity_ - off;
  std::memcpy(data_ + off, src, first);
  if (first < n) std::memcpy(data_, static_cast<const unsigned char*>(src) + first, n - first);
}

void TaskRing::copy_out(std::uint64_t pos, void* dst, std::size_t n) const noexcept {
  const std::size_t off = static_cast<std::size_t>(pos & (capacity_ - 1));
  const std::size_t first = n < capacity_ - off ? n : capacity_ - off;
  std::memcpy(dst, data_ + off, first);
  if (first < n) std::memcpy(static_cast<unsigned char*>(dst) + first, data_, n - first);
}

bool TaskRing::try_push(std::uint64_t task_id, FrameKind kind, std::uint32_t flags,
                        const void* payload, std::size_t length) {
  SHOAL_CHECK(length <= max_payload(), "frame payload of " + std::to_string(length) +
                                           " bytes exceeds the ring's limit of " +
                                           std::to_string(max_payload()));
  const std::uint64_t tail = ctl_->tail.load(std::memory_order_relaxed);  // only we write it
  const std::uint64_t head = ctl_->head.load(std::memory_order_seq_cst);
  const std::uint64_t need = frame_footprint(length);
  if (tail - head > capacity_) corrupt("positions out of range");
  if (capacity_ - (tail - head) < need) return false;
  FrameHeader h = make_frame_header(task_id, kind, flags, static_cast<std::uint32_t>(length));
  copy_in(tail, &h, sizeof h);
  if (length > 0) copy_in(tail + sizeof h, payload, length);
  ctl_->frames_in.store(ctl_->frames_in.load(std::memory_order_relaxed) + 1,
                        std::memory_order_relaxed);
  // seq_cst (not just release): pairs with the consumer's seq_cst store of
  // consumer_waiting in wait_readable(), see the top comment.
  ctl_->tail.store(tail + need, std::memory_order_seq_cst);
  return true;
}

void TaskRing::notify_consumer() noexcept {
  if (ctl_->consumer_waiting.load(std::memory_order_seq_cst) != 0 &&
      ctl_->consumer_waiting.exchange(0, std::memory_order_seq_cst) != 0)
    futex_wake(&ctl_->consumer_waiting, 1);
}

void TaskRing::wake_consumer() noexcept {
  ctl_->consumer_waiting.store(0, std::memory_order_seq_cst);
  futex_wake(&ctl_->consumer_waiting, 1);
}

void TaskRing::release(std::uint64_t new_head) noexcept {
  ctl_->head.store(new_head, std::memory_order_seq_cst);
  if (ctl_->producer_waiting.load(std::memory_order_seq_cst) != 0 &&
      ctl_->producer_waiting.exchange(0, std::memory_order_seq_cst) != 0)
    futex_wake(&ctl_->producer_waiting, 1);
}

bool TaskRing::wait_readable(std::int64_t timeout_ns, std::int64_t spin_ns,
                             const std::atomic<std::uint32_t>* stop) noexcept {
  auto stopped = [stop] { return stop != nullptr && stop->load(std::memory_order_seq_cst) != 0; };
  if (!empty()) return true;
  const std::uint64_t start = monotonic_ns();
  while (true) {
    for (int i = 0; i < 64; ++i) {
      if (!empty()) return true;
      detail::cpu_relax();
    }
    const auto waited = static_cast<std::int64_t>(monotonic_ns() - start);
    if (waited >= spin_ns) break;
    // On an oversubscribed machine the producer may need this very core.
    sched_yield();
  }
  const std::uint64_t deadline = timeout_ns < 0 ? 0 : start + static_cast<std::uint64_t>(timeout_ns);
  while (true) {
    std::int64_t left = -1;
    if (timeout_ns >= 0) {
      const std::uint64_t now = monotonic_ns();
      if (now >= deadline) return !empty();
      left = static_cast<std::int64_t>(deadline - now);
    }
    ctl_->consumer_waiting.store(1, std::memory_order_seq_cst);
    if (!empty() || stopped()) {
      ctl_->consumer_waiting.store(0, std::memory_order_relaxed);
      return !empty();
    }
    futex_wait(&ctl_->consumer_waiting, 1, left);
    // Woken with 0 (by a producer or wake_consumer): report what is there;
    // a spurious return with 1 still set loops until the deadline.
    if (ctl_->consumer_waiting.exchange(0, std::memory_order_seq_cst) == 0) return !empty();
    if (!empty()) return true;
  }
}

bool TaskRing::wait_writable(std::size_t length, std::int64_t timeout_ns,
                             std::int64_t spin_ns) noexcept {
  const std::uint64_t need = frame_footprint(length);
  auto fits = [&] {
    const std::uint64_t tail = ctl_->tail.load(std::memory_order_relaxed);
    return capacity_ - (tail - ctl_->head.load(std::memory_order_seq_cst)) >= need;
  };
  if (need > capacity_) return false;
  const std::uint64_t start = monotonic_ns();
  while (static_cast<std::int64_t>(monotonic_ns() - start) < spin_ns) {
    for (int i = 0; i < 64; ++i) {
      if (fits()) return true;
      detail::cpu_relax();
    }
  }
  const std::uint64_t deadline = timeout_ns < 0 ? 0 : start + static_cast<std::uint64_t>(timeout_ns);
  while (true) {
    std::int64_t left = -1;
    if (timeout_ns >= 0) {
      const std::uint64_t now = monotonic_ns();
      if (now >= deadline) return fits();
      left = static_cast<std::int64_t>(deadline - now);
    }
    ctl_->producer_waiting.store(1, std::memory_order_seq_cst);
    if (fits()) {
      ctl_->producer_waiting.store(0, std::memory_order_relaxed);
      return true;
    }
    futex_wait(&ctl_->producer_waiting, 1, left);
    ctl_->producer_waiting.store(0, std::memory_order_relaxed);
    if (fits()) return true;
  }
}

void TaskRing::reset() noexcept {
  ctl_->head.store(0, std::memory_order_relaxed);
  ctl_->tail.store(0, std::memory_order_relaxed);
  ctl_->producer_waiting.store(0, std::memory_order_relaxed);
  ctl_->frames_in.store(0, std::memory_order_relaxed);
  ctl_->frames_out.store(0, std::memory_order_relaxed);
  ctl_->consumer_waiting.store(0, std::memory_order_seq_cst);
}

void TaskRing::corrupt(const char* what) const {
  throw Error(std::string("TaskRing corrupted (a process wrote into shoal's shared control "
                          "memory?): ") + what);
}

}  // namespace shoal
