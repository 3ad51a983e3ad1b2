// shoal/pool_channel.hpp — the shared control memory of one process pool.
//
// One memfd (anonymous: it never appears in /dev/shm, so no crash can leak it)
// mapped by the driver and by every worker, which inherits it as a file
// descriptor. Layout:
//
//   ChannelHeader   magic, geometry, the driver's doorbell, the shutdown flag
//   slot 0          WorkerSlot | task ring data | result ring data
//   slot 1          ...
//
//   driver                                        worker i (slot i)
//   push_tasks ──> slot[i].task ring ──────────> next frames (spin, then futex)
//   wait_driver <── doorbell (futex) <── notify ── push result
//   drain results <── slot[i].result ring <────── (frame per task)
//
// A slot outlives its worker: when worker i dies the driver resets slot i and
// starts the replacement on it. The driver keeps every task until its result
// arrives, so nothing a dead worker held is lost.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "shoal/task_ring.hpp"

namespace shoal {

struct ChannelHeader {
  std::uint64_t magic = 0;
  std::uint32_t version = 0;
  std::uint32_t slots = 0;
  std::uint64_t ring_bytes = 0;
  std::uint64_t slot_bytes = 0;
  std::uint64_t total_bytes = 0;
  // Bumped by whoever wants the driver's waiting threads to look again (a
  // worker that pushed a result while driver_sleepers > 0, the supervisor on
  // a death, a driver thread that completed tasks for another). Futex word.
  alignas(64) std::atomic<std::uint32_t> doorbell{0};
  // Driver threads inside wait_driver()'s futex sleep. Incremented (seq_cst)
  // before their last look at the rings; workers read it (seq_cst) after
  // publishing a result, so a result is never left unseen by a sleeper.
  std::atomic<std::uint32_t> driver_sleepers{0};
  // Set once by the driver at shutdown; workers read it after every wake.
  alignas(64) std::atomic<std::uint32_t> shutdown{0};
};

struct WorkerSlot {
  // The worker's pid, written by the driver after spawning (informational).
  alignas(64) std::atomic<std::int32_t> pid{0};
  // The task the worker is running (0: none), written by the worker before
  // and after each task, read by the driver when the worker died (whose task
  // failed?) and for time limits. started_ns is the monotonic start time,
  // written before current_task (release), so a reader that sees the task
  // (acquire) sees its start time.
  std::atomic<std::uint64_t> current_task{0};
  std::atomic<std::uint64_t> started_ns{0};
  // How long its tasks take: a moving average (1/8 weight to the newest) of
  // the time from one set_current() to the next, in ns; 0 before the first.
  std::atomic<std::uint64_t> task_ns{0};
  RingControl task_ctl;    // driver -> worker
  RingControl result_ctl;  // worker -> driver
};

// The monitor's rings as a worker maps them (pool_channel.cpp).
struct MonitorAttachment;

class PoolChannel {
 public:
  static constexpr std::uint64_t magic_value = 0x53484f414c504f4full;  // "SHOALPOO"
  static constexpr std::uint32_t version_value = 2;

  // A new channel with `slots` worker slots, each with two rings of
  // ring_bytes (rounded up to a power of two).
  static PoolChannel create(std::size_t slots, std::size_t ring_bytes);
  // Maps the channel from an inherited descriptor (worker side) and closes it.
  static PoolChannel attach_fd(int fd);

  PoolChannel(PoolChannel&& other) noexcept;
  PoolChannel& operator=(PoolChannel&& other) noexcept;
  PoolChannel(const PoolChannel&) = delete;
  PoolChannel& operator=(const PoolChannel&) = delete;
  ~PoolChannel();

  // The memfd (driver side; -1 in workers): passed to workers at spawn.
  int fd() const noexcept { return fd_; }
  std::size_t slots() const noexcept { return header_->slots; }
  std::size_t ring_bytes() const noexcept { return header_->ring_bytes; }
  ChannelHeader& header() const noexcept { return *header_; }
  WorkerSlot& slot(std::size_t i) const;
  TaskRing task_ring(std::size_t i) const;
  TaskRing result_ring(std::size_t i) const;

  // ---- driver ----
  std::uint32_t doorbell() const noexcept {
    return header_->doorbell.load(std::memory_order_seq_cst);
  }
  // Bumps the doorbell and wakes every sleeping driver thread.
  void ring_doorbell() noexcept;
  // Wakes sleeping driver threads if there are any (worker, after a result).
  void notify_driver() noexcept;
  // True if some result ring holds a frame.
  bool any_result() const noexcept;
  // Returns once the doorbell differs from `seen`, a result is waiting, or
  // timeout_ns passed (< 0: no limit); spins spin_ns before sleeping.
  // Returns whether something happened (false: timeout).
  bool wait_driver(std::uint32_t seen, std::int64_t timeout_ns, std::int64_t spin_ns) noexcept;
  // Worker side: slot i's worker starts task_id (0: it finished its task and
  // runs none). Records the start time and the task time average; marking
  // the task that is already current again changes nothing.
  void set_current(std::size_t i, std::uint64_t task_id);
  // Where the driver puts a short task. A worker of short tasks that is
  // awake (running or spinning, not asleep on its futex) takes it, rather
  // than an idle worker that needs a futex wake first (tens of microseconds
  // on a virtual machine), as a scheduler prefers a spinning thread to a
  // parked one. Such a worker: its tasks take under max_task_ns on average
  // (set_current), it has at most max_queued frames not taken yet, and it
  // runs no task or one that has run at most twice its average (a task
  // running longer may be a long one: nothing queues behind it). The first
  // such slot (lowest index), not the least loaded: while one worker keeps
  // up with the driver, the others sleep and leave their cores to the
  // driver; they get tasks once its queue passes max_queued.
  // Returns that slot's index (>= 0), or, when there is none, -1 - i for
  // the slot i with the least load (frames not taken + 1 if running a task;
  // the lowest index on ties).
  long pick_slot(std::uint64_t max_queued, std::uint64_t max_task_ns) const noexcept;
  // Tells every worker to leave its loop and wakes them.
  void shutdown() noexcept;
  // Empties slot i's rings and bookkeeping for a replacement worker.
  void reset_slot(std::size_t i);

  // ---- monitor, worker side (shoal/event_ring.hpp) ----
  // From now on, every task this process ends on a slot is recorded in ring
  // `slot` of the event region in shared segment `segment`, as pool `pool`.
  // Called once, from the worker's first Control frame, when the driver
  // runs a monitor; never otherwise (then note_result is one null check).
  void attach_monitor(const std::string& segment, std::uint16_t pool, std::size_t slot);
  // Slot i's worker pushed a Result or Failure frame of `bytes` bytes for
  // task_id: its record (start and end: the set_current() calls around the
  // task, bytes, outcome) goes to the ring when the task ends, or now if it
  // already has. A worker killed between its push and its next
  // set_current() loses that one record (the driver still gets the result).
  void note_result(std::size_t i, std::uint64_t task_id, std::uint32_t kind,
                   std::size_t bytes) const noexcept {
    if (monitor_ != nullptr) record_result(i, task_id, kind, bytes);
  }

  // The next result's true size, for a result sent by reference (the frame
  // holds a segment's name): the next note_result records `bytes` instead of
  // the frame's. Nothing without a monitor.
  void next_result_bytes(std::size_t bytes) noexcept;

  bool is_shutdown() const noexcept { return header_->shutdown.load(std::memory_order_acquire) != 0; }
  // The shutdown word itself, for waits that must end when it is set.
  const std::atomic<std::uint32_t>* shutdown_flag() const noexcept { return &header_->shutdown; }

 private:
  PoolChannel(int fd, void* base, std::size_t size) noexcept;
  void close() noexcept;

  int fd_ = -1;
  void* base_ = nullptr;
  std::size_t size_ = 0;
  ChannelHeader* header_ = nullptr;
  void record_result(std::size_t i, std::uint64_t task_id, std::uint32_t kind,
                     std::size_t bytes) const noexcept;
  void task_ended(std::size_t i, std::uint64_t task, std::uint64_t started,
                  std::uint64_t now) noexcept;
  // The monitor's ring region, mapped in this worker (null: no monitor).
  std::shared_ptr<MonitorAttachment> monitor_;
};

}  // namespace shoal
