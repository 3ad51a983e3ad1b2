#include "shoal/pool_channel.hpp"

#include "shoal/detail/futex.hpp"
#include "shoal/event_ring.hpp"
#include "shoal/frame.hpp"
#include "shoal/shm_segment.hpp"

#include <sched.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <new>
#include <string>
#include <utility>

namespace shoal {

namespace {

constexpr std::size_t round_up(std::size_t n, std::size_t a) { return (n + a - 1) / a * a; }

std::size_t pow2_at_least(std::size_t n) {
  std::size_t p = TaskRing::min_capacity;
  while (p < n) {
    SHOAL_CHECK(p <= (std::size_t{1} << 40), "ring size too large");
    p <<= 1;
  }
  return p;
}

// Slot geometry: [WorkerSlot][task data][result data], each 4 KiB aligned.
constexpr std::size_t page = 4096;
std::size_t slot_header_bytes() { return round_up(sizeof(WorkerSlot), page); }

}  // namespace

PoolChannel::PoolChannel(int fd, void* base, std::size_t size) noexcept
    : fd_(fd), base_(base), size_(size), header_(static_cast<ChannelHeader*>(base)) {}

PoolChannel PoolChannel::create(std::size_t slots, std::size_t ring_bytes) {
  SHOAL_CHECK(slots >= 1 && slots <= 4096, "a pool needs 1..4096 worker slots, got " +
                                               std::to_string(slots));
  const std::size_t ring = pow2_at_least(ring_bytes);
  const std::size_t slot_bytes = slot_header_bytes() + 2 * ring;
  const std::size_t total = round_up(sizeof(ChannelHeader), page) + slots * slot_bytes;
  int fd = memfd_create("shoal-pool", MFD_CLOEXEC);
  if (fd < 0) throw_errno("memfd_create for the pool's control memory");
  if (ftruncate(fd, static_cast<off_t>(total)) != 0) {
    int e = errno;
    ::close(fd);
    throw_errno("sizing the pool's control memory to " + std::to_string(total) + " bytes", e);
  }
  void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) {
    int e = errno;
    ::close(fd);
    throw_errno("mapping the pool's control memory", e);
  }
  PoolChannel ch(fd, p, total);
  auto* h = new (p) ChannelHeader();
  h->magic = magic_value;
  h->version = version_value;
  h->slots = static_cast<std::uint32_t>(slots);
  h->ring_bytes = ring;
  h->slot_bytes = slot_bytes;
  h->total_bytes = total;
  for (std::size_t i = 0; i < slots; ++i) {
    auto* s = new (&ch.slot(i)) WorkerSlot();
    TaskRing::initialize(&s->task_ctl, ring);
    TaskRing::initialize(&s->result_ctl, ring);
  }
  return ch;
}

PoolChannel PoolChannel::attach_fd(int fd) {
  struct stat st {};
  if (fstat(fd, &st) != 0) throw_errno("fstat of the pool control descriptor");
  SHOAL_CHECK(static_cast<std::size_t>(st.st_size) >= sizeof(ChannelHeader),
              "descriptor " + std::to_string(fd) + " is not a shoal pool channel (too small)");
  const auto size = static_cast<std::size_t>(st.st_size);
  void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) throw_errno("mapping the pool's control memory");
  ::close(fd);
  PoolChannel ch(-1, p, size);
  const ChannelHeader& h = *ch.header_;
  SHOAL_CHECK(h.magic == magic_value && h.version == version_value,
              "descriptor is not a shoal pool channel of this version");
  SHOAL_CHECK(h.total_bytes == size && h.slots >= 1 &&
                  round_up(sizeof(ChannelHeader), page) + h.slots * h.slot_bytes <= size &&
                  h.slot_bytes >= slot_header_bytes() + 2 * h.ring_bytes,
              "pool channel header inconsistent with its size");
  return ch;
}

PoolChannel::PoolChannel(PoolChannel&& o) noexcept
    : fd_(std::exchange(o.fd_, -1)),
      base_(std::exchange(o.base_, nullptr)),
      size_(std::exchange(o.size_, 0)),
      header_(std::exchange(o.header_, nullptr)),
      monitor_(std::move(o.monitor_)) {}

PoolChannel& PoolChannel::operator=(PoolChannel&& o) noexcept {
  if (this != &o) {
    close();
    fd_ = std::exchange(o.fd_, -1);
    base_ = std::exchange(o.base_, nullptr);
    size_ = std::exchange(o.size_, 0);
    header_ = std::exchange(o.header_, nullptr);
    monitor_ = std::move(o.monitor_);
  }
  return *this;
}

PoolChannel::~PoolChannel() { close(); }

void PoolChannel::close() noexcept {
  if (base_ != nullptr) munmap(base_, size_);
  if (fd_ >= 0) ::close(fd_);
  base_ = nullptr;
  header_ = nullptr;
  fd_ = -1;
}

WorkerSlot& PoolChannel::slot(std::size_t i) const {
  SHOAL_CHECK(i < header_->slots, "worker slot " + std::to_string(i) + " out of range (" +
                                      std::to_string(header_->slots) + " slots)");
  auto* base = static_cast<unsigned char*>(base_) + round_up(sizeof(ChannelHeader), page) +
               i * header_->slot_bytes;
  return *reinterpret_cast<WorkerSlot*>(base);
}

TaskRing PoolChannel::task_ring(std::size_t i) const {
  WorkerSlot& s = slot(i);
  auto* data = reinterpret_cast<unsigned char*>(&s) + slot_header_bytes();
  return TaskRing(&s.task_ctl, data);
}

TaskRing PoolChannel::result_ring(std::size_t i) const {
  WorkerSlot& s = slot(i);
  auto* data = reinterpret_cast<unsigned char*>(&s) + slot_header_bytes() + header_->ring_bytes;
  return TaskRing(&s.result_ctl, data);
}

void PoolChannel::ring_doorbell() noexcept {
  header_->doorbell.fetch_add(1, std::memory_order_seq_cst);
  if (header_->driver_sleepers.load(std::memory_order_seq_cst) != 0)
    detail::futex_wake(&header_->doorbell, INT_MAX);
}

void PoolChannel::notify_driver() noexcept {
  // Pairs with wait_driver(): the result's tail store (seq_cst) precedes this
  // load; the sleeper's increment precedes its last look at the rings.
  if (header_->driver_sleepers.load(std::memory_order_seq_cst) != 0) ring_doorbell();
}

bool PoolChannel::any_result() const noexcept {
  for (std::size_t i = 0; i < header_->slots; ++i)
    if (!result_ring(i).empty()) return true;
  return false;
}

void PoolChannel::set_current(std::size_t i, std::uint64_t task_id) {
  WorkerSlot& s = slot(i);
  const std::uint64_t running = s.current_task.load(std::memory_order_relaxed);
  // The running task marked again (Worker.run_batch hands a non-scalar result
  // to run_one, which marks it): it keeps its start time.
  if (task_id != 0 && task_id == running) return;
  const std::uint64_t now = detail::monotonic_ns();
  if (running != 0) {
    const std::uint64_t started = s.started_ns.load(std::memory_order_relaxed);
    if (monitor_ != nullptr) task_ended(i, running, started, now);
    const std::uint64_t took = now - started;
    const std::uint64_t avg = s.task_ns.load(std::memory_order_relaxed);
    s.task_ns.store(avg == 0 ? took : avg - avg / 8 + took / 8, std::memory_order_relaxed);
  }
  s.started_ns.store(now, std::memory_order_relaxed);
  s.current_task.store(task_id, std::memory_order_release);
}

// The monitor's side of a worker (process-local; one worker thread uses it).
// A task's end time is the clock read of the set_current() that follows its
// result (the next task's start, or 0 after the last): no clock read of its
// own. note_result() keeps the result's size and outcome until then.
struct MonitorAttachment {
  explicit MonitorAttachment(SharedSegment seg) : segment(std::move(seg)) {}
  SharedSegment segment;
  EventRings rings;
  std::uint16_t pool = 0;
  std::uint32_t pid = 0;
  // The current task's result, pushed, not recorded yet (task 0: none).
  TaskEvent pending{};
  // The task that ended (set_current) before its result was pushed (a
  // failure: Worker.run_one marks the task done before it formats the
  // traceback): its times, for the result still to come.
  TaskEvent ended{};
  // next_result_bytes(): the size the next result records (0: the frame's).
  std::uint64_t next_bytes = 0;
};

void PoolChannel::next_result_bytes(std::size_t bytes) noexcept {
  if (monitor_ != nullptr) monitor_->next_bytes = bytes;
}

void PoolChannel::attach_monitor(const std::string& segment, std::uint16_t pool,
                                 std::size_t slot_index) {
  auto seg = SharedSegment::attach(segment);
  EventRings rings = EventRings::attach(seg.data(), seg.size());
  const auto pid = static_cast<std::uint32_t>(::getpid());
  rings.set_producer(slot_index, pid);
  auto m = std::make_shared<MonitorAttachment>(std::move(seg));
  m->rings = rings;
  m->pool = pool;
  m->pid = pid;
  monitor_ = std::move(m);
}

void PoolChannel::task_ended(std::size_t i, std::uint64_t task, std::uint64_t started,
                             std::uint64_t now) noexcept {
  MonitorAttachment& m = *monitor_;
  if (m.pending.task == task) {
    m.pending.start = static_cast<std::int64_t>(started);
    m.pending.end = static_cast<std::int64_t>(now);
    m.rings.record(i, m.pending);
    m.pending.task = 0;
    return;
  }
  m.ended.task = task;
  m.ended.start = static_cast<std::int64_t>(started);
  m.ended.end = static_cast<std::int64_t>(now);
}

void PoolChannel::record_result(std::size_t i, std::uint64_t task_id, std::uint32_t kind,
                                std::size_t bytes) const noexcept {
  if (task_id == 0 || (kind != static_cast<std::uint32_t>(FrameKind::Result) &&
                       kind != static_cast<std::uint32_t>(FrameKind::Failure)))
    return;
  MonitorAttachment& m = *monitor_;
  TaskEvent ev;
  ev.task = task_id;
  ev.bytes_out = m.next_bytes != 0 ? m.next_bytes : bytes;
  m.next_bytes = 0;
  ev.pid = m.pid;
  ev.pool = m.pool;
  ev.slot = static_cast<std::uint16_t>(i);
  ev.outcome = kind == static_cast<std::uint32_t>(FrameKind::Result) ? 0 : 1;
  const WorkerSlot& s = *reinterpret_cast<const WorkerSlot*>(
      static_cast<unsigned char*>(base_) + round_up(sizeof(ChannelHeader), page) +
      i * header_->slot_bytes);
  if (s.current_task.load(std::memory_order_relaxed) == task_id) {
    m.pending = ev;  // recorded when the task ends (set_current)
    return;
  }
  if (m.ended.task == task_id) {
    ev.start = m.ended.start;
    ev.end = m.ended.end;
    m.ended.task = 0;
  } else {
    // Never current: it failed before it began (its arguments could not be
    // loaded in the worker). It took no time.
    ev.start = ev.end = static_cast<std::int64_t>(detail::monotonic_ns());
  }
  m.rings.record(i, ev);
}

long PoolChannel::pick_slot(std::uint64_t max_queued, std::uint64_t max_task_ns) const noexcept {
  std::uint64_t now = 0;
  long least = 0;
  std::uint64_t least_load = ~std::uint64_t{0};
  for (std::size_t i = 0; i < header_->slots; ++i) {
    const WorkerSlot& s = slot(i);
    const std::uint64_t queued = task_ring(i).queued();
    const bool running = s.current_task.load(std::memory_order_acquire) != 0;
    const std::uint64_t load = queued + (running ? 1 : 0);
    if (load < least_load) {
      least = static_cast<long>(i);
      least_load = load;
    }
    if (s.task_ctl.consumer_waiting.load(std::memory_order_relaxed) != 0) continue;  // asleep
    const std::uint64_t took = s.task_ns.load(std::memory_order_relaxed);
    if (took == 0 || took >= max_task_ns) continue;  // not known to run short tasks
    if (queued > max_queued) continue;
    if (running) {
      // Behind a task only while it is young for this worker: one that has
      // run for more than twice the average may be a long one.
      if (now == 0) now = detail::monotonic_ns();
      const std::uint64_t started = s.started_ns.load(std::memory_order_relaxed);
      if (now > started && now - started > 2 * took) continue;
    }
    return static_cast<long>(i);  // the first that fits, see the header
  }
  return -1 - least;
}

bool PoolChannel::wait_driver(std::uint32_t seen, std::int64_t timeout_ns,
                              std::int64_t spin_ns) noexcept {
  auto ready = [&] { return doorbell() != seen || any_result(); };
  const std::uint64_t start = detail::monotonic_ns();
  do {
    for (int i = 0; i < 16; ++i) {
      if (ready()) return true;
      detail::cpu_relax();
    }
    if (spin_ns > 0) sched_yield();  // the worker we wait for may need this core
  } while (static_cast<std::int64_t>(detail::monotonic_ns() - start) < spin_ns);
  const std::uint64_t deadline = timeout_ns < 0 ? 0 : start + static_cast<std::uint64_t>(timeout_ns);
  while (true) {
    std::int64_t left = -1;
    if (timeout_ns >= 0) {
      const std::uint64_t now = detail::monotonic_ns();
      if (now >= deadline) return ready();
      left = static_cast<std::int64_t>(deadline - now);
    }
    const std::uint32_t bell = doorbell();
    header_->driver_sleepers.fetch_add(1, std::memory_order_seq_cst);
    if (ready()) {
      header_->driver_sleepers.fetch_sub(1, std::memory_order_seq_cst);
      return true;
    }
    detail::futex_wait(&header_->doorbell, bell, left);
    header_->driver_sleepers.fetch_sub(1, std::memory_order_seq_cst);
    if (ready()) return true;
  }
}

void PoolChannel::shutdown() noexcept {
  header_->shutdown.store(1, std::memory_order_seq_cst);
  for (std::size_t i = 0; i < header_->slots; ++i) task_ring(i).wake_consumer();
}

void PoolChannel::reset_slot(std::size_t i) {
  WorkerSlot& s = slot(i);
  task_ring(i).reset();
  result_ring(i).reset();
  s.current_task.store(0, std::memory_order_relaxed);
  s.started_ns.store(0, std::memory_order_relaxed);
  s.task_ns.store(0, std::memory_order_relaxed);
  s.pid.store(0, std::memory_order_seq_cst);
}

}  // namespace shoal
