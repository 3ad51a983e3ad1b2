// shoal/event_ring.hpp — the monitor's per-worker task-event rings.
//
// One region (a SharedSegment for a process pool, heap memory for the threads
// backend) holds one ring per worker slot. Each ring has exactly one producer
// at a time (the worker process of that slot, or that pool thread) and one
// consumer (the driver's Sampler thread, at 10 Hz):
//
//   worker (producer)                              driver Sampler (consumer)
//   record(ev): counters += ev  (always exact)
//               ring full? dropped += 1 ── never blocks, never waits
//               else copy ev, head += 1 (release) ──> drain(): acquire head,
//                                                     copy, tail = head (release)
//
// A slot outlives its worker: the replacement continues from the head it
// finds in the region (a record the dead worker was writing was never
// published, so nothing half-written is ever read).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace shoal {

// One finished task attempt as its worker saw it. Times: CLOCK_MONOTONIC ns.
struct TaskEvent {
  std::uint64_t task = 0;       // the pool's task id
  std::int64_t start = 0;       // the worker began it
  std::int64_t end = 0;         // its result (or failure) was sent
  std::uint64_t bytes_out = 0;  // the result frame's payload
  std::uint32_t pid = 0;        // the worker process (0: a pool thread)
  std::uint16_t pool = 0;       // the monitor's number for the pool
  std::uint16_t slot = 0;       // the worker slot (or thread index) in it
  std::uint8_t outcome = 0;     // 0 ok, 1 raised (shoal/monitor/_run.py)
  std::uint8_t pad[7] = {};
};
static_assert(sizeof(TaskEvent) == 48);

inline constexpr std::size_t histogram_buckets = 40;

// The always-on counters of one ring, a copy for the consumer.
struct RingCounters {
  std::uint64_t tasks = 0;
  std::uint64_t busy_ns = 0;
  std::uint64_t dropped = 0;
  std::uint32_t pid = 0;
  std::uint64_t hist[histogram_buckets] = {};
};

// The control block of one ring, in the region before its records.
struct EventRingControl {
  // ---- written only by the producer; read by the consumer ----
  // Records published so far. Stored with release after the record's bytes,
  // loaded with acquire by the consumer: a record below head is complete.
  alignas(64) std::atomic<std::uint64_t> head{0};
  // Records that did not fit (the ring was full). The producer is the only
  // writer (load + store, relaxed); the consumer reads a value that is at
  // worst one tick old, which only delays what it reports.
  std::atomic<std::uint64_t> dropped{0};
  // Counters of every recorded task, dropped or not: same discipline as
  // `dropped` (each word is atomic; a reader may see tasks and busy_ns of two
  // consecutive records, which the next tick corrects).
  std::atomic<std::uint64_t> tasks{0};
  std::atomic<std::uint64_t> busy_ns{0};
  std::atomic<std::uint64_t> hist[histogram_buckets] = {};
  // The process producing now (written when a worker attaches).
  std::atomic<std::uint32_t> pid{0};
  // ---- written only by the consumer; read by the producer ----
  // Records consumed. Stored with release after the consumer copied them,
  // loaded with acquire by the producer before it reuses their space.
  alignas(64) std::atomic<std::uint64_t> tail{0};
};

struct EventRegionHeader {
  std::uint64_t magic = 0;
  std::uint32_t version = 0;
  std::uint32_t rings = 0;
  std::uint64_t capacity = 0;   // records per ring (a power of two)
  std::uint64_t ring_bytes = 0; // control block + records, a multiple of 64
};

// A view of a region of rings; the memory belongs to the caller.
class EventRings {
 public:
  static constexpr std::uint64_t magic_value = 0x5348'4f41'4c45'5652ull;  // "SHOALEVR"
  static constexpr std::uint32_t version_value = 1;

  // Bytes a region of `rings` rings of `capacity` records needs (capacity is
  // rounded up to a power of two, at least 2).
  static std::size_t bytes_for(std::size_t rings, std::size_t capacity) noexcept;
  // Lays out a new region in zero-filled memory of at least bytes_for() bytes.
  static EventRings format(void* base, std::size_t size, std::size_t rings, std::size_t capacity);
  // A view of a region another process formatted; throws shoal::Error if
  // it is not one.
  static EventRings attach(void* base, std::size_t size);

  EventRings() = default;
  std::size_t rings() const noexcept { return header_ ? header_->rings : 0; }
  std::size_t capacity() const noexcept { return header_ ? header_->capacity : 0; }
  EventRingControl& control(std::size_t ring) const;

  // ---- producer of `ring` ----
  // Counts ev (tasks, busy time, histogram) and publishes it if it fits.
  // Returns false if it was dropped. Never blocks.
  bool record(std::size_t ring, const TaskEvent& ev) const noexcept;
  // The producer of `ring` is now process pid.
  void set_producer(std::size_t ring, std::uint32_t pid) const noexcept;

  // ---- consumer ----
  // Appends every published record of `ring` to out; returns how many.
  std::size_t drain(std::size_t ring, std::vector<TaskEvent>& out) const;
  RingCounters counters(std::size_t ring) const noexcept;

 private:
  explicit EventRings(EventRegionHeader* h) noexcept : header_(h) {}
  TaskEvent* records(std::size_t ring) const noexcept;

  EventRegionHeader* header_ = nullptr;
};

// The histogram bucket of a duration: k with 2^k <= ns < 2^(k+1), clamped.
std::size_t duration_bucket(std::uint64_t ns) noexcept;

}  // namespace shoal
