#include "shoal/event_ring.hpp"

#include <bit>
#include <cstring>

#include "shoal/check.hpp"

namespace shoal {

namespace {
constexpr std::size_t header_bytes = 64;

std::size_t round_capacity(std::size_t capacity) noexcept {
  return std::bit_ceil(capacity < 2 ? std::size_t{2} : capacity);
}

std::size_t ring_bytes_for(std::size_t capacity) noexcept {
  std::size_t b = sizeof(EventRingControl) + capacity * sizeof(TaskEvent);
  return (b + 63) / 64 * 64;
}
}  // namespace

std::size_t duration_bucket(std::uint64_t ns) noexcept {
  if (ns == 0) return 0;
  const std::size_t k = static_cast<std::size_t>(std::bit_width(ns)) - 1;
  return k < histogram_buckets ? k : histogram_buckets - 1;
}

std::size_t EventRings::bytes_for(std::size_t rings, std::size_t capacity) noexcept {
  return header_bytes + rings * ring_bytes_for(round_capacity(capacity));
}

EventRings EventRings::format(void* base, std::size_t size, std::size_t rings,
                              std::size_t capacity) {
  SHOAL_CHECK(base != nullptr && size >= bytes_for(rings, capacity),
              "event ring region too small for its rings");
  SHOAL_CHECK(reinterpret_cast<std::uintptr_t>(base) % 64 == 0,
              "event ring region must be 64-byte aligned");
  capacity = round_capacity(capacity);
  auto* h = new (base) EventRegionHeader{};
  h->rings = static_cast<std::uint32_t>(rings);
  h->capacity = capacity;
  h->ring_bytes = ring_bytes_for(capacity);
  for (std::size_t i = 0; i < rings; ++i)
    new (static_cast<char*>(base) + header_bytes + i * h->ring_bytes) EventRingControl{};
  h->version = version_value;
  h->magic = magic_value;
  return EventRings(h);
}

EventRings EventRings::attach(void* base, std::size_t size) {
  SHOAL_CHECK(base != nullptr && size >= header_bytes, "event ring region too small");
  auto* h = static_cast<EventRegionHeader*>(base);
  SHOAL_CHECK(h->magic == magic_value && h->version == version_value,
              "not a shoal event ring region (magic or version)");
  SHOAL_CHECK(h->ring_bytes == ring_bytes_for(h->capacity) &&
                  size >= header_bytes + h->rings * h->ring_bytes,
              "event ring region geometry does not match its size");
  return EventRings(h);
}

EventRingControl& EventRings::control(std::size_t ring) const {
  SHOAL_CHECK(header_ != nullptr && ring < header_->rings, "event ring index out of range");
  return *reinterpret_cast<EventRingControl*>(reinterpret_cast<char*>(header_) + header_bytes +
                                              ring * header_->ring_bytes);
}

TaskEvent* EventRings::records(std::size_t ring) const noexcept {
  return reinterpret_cast<TaskEvent*>(reinterpret_cast<char*>(header_) + header_bytes +
                                      ring * header_->ring_bytes + sizeof(EventRingControl));
}

bool EventRings::record(std::size_t ring, const TaskEvent& ev) const noexcept {
  if (header_ == nullptr || ring >= header_->rings) return false;
  EventRingControl& c = *reinterpret_cast<EventRingControl*>(
      reinterpret_cast<char*>(header_) + header_bytes + ring * header_->ring_bytes);
  const std::uint64_t took = ev.end > ev.start ? static_cast<std::uint64_t>(ev.end - ev.start) : 0;
  // Single producer: plain read-modify-write through relaxed load/store.
  c.tasks.store(c.tasks.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  c.busy_ns.store(c.busy_ns.load(std::memory_order_relaxed) + took, std::memory_order_relaxed);
  auto& bucket = c.hist[duration_bucket(took)];
  bucket.store(bucket.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  const std::uint64_t head = c.head.load(std::memory_order_relaxed);
  const std::uint64_t cap = header_->capacity;
  if (head - c.tail.load(std::memory_order_acquire) >= cap) {
    c.dropped.store(c.dropped.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return false;
  }
  std::memcpy(records(ring) + (head & (cap - 1)), &ev, sizeof ev);
  c.head.store(head + 1, std::memory_order_release);
  return true;
}

void EventRings::set_producer(std::size_t ring, std::uint32_t pid) const noexcept {
  if (header_ == nullptr || ring >= header_->rings) return;
  control(ring).pid.store(pid, std::memory_order_relaxed);
}

std::size_t EventRings::drain(std::size_t ring, std::vector<TaskEvent>& out) const {
  EventRingControl& c = control(ring);
  const std::uint64_t tail = c.tail.load(std::memory_order_relaxed);
  const std::uint64_t head = c.head.load(std::memory_order_acquire);
  const std::uint64_t cap = header_->capacity;
  // A head more than a ring ahead of tail is impossible for a well-behaved
  // producer; a corrupted region must not make us read past the records.
  const std::uint64_t n = head - tail <= cap ? head - tail : 0;
  if (n == 0) return 0;
  const TaskEvent* rec = records(ring);
  // At most two runs: to the end of the records, then from their start.
  const std::size_t at = out.size();
  out.resize(at + n);
  const std::uint64_t first = tail & (cap - 1);
  const std::uint64_t run = n < cap - first ? n : cap - first;
  std::memcpy(out.data() + at, rec + first, run * sizeof(TaskEvent));
  if (run < n) std::memcpy(out.data() + at + run, rec, (n - run) * sizeof(TaskEvent));
  c.tail.store(head, std::memory_order_release);
  return n;
}

RingCounters EventRings::counters(std::size_t ring) const noexcept {
  RingCounters r;
  if (header_ == nullptr || ring >= header_->rings) return r;
  const EventRingControl& c = *reinterpret_cast<const EventRingControl*>(
      reinterpret_cast<const char*>(header_) + header_bytes + ring * header_->ring_bytes);
  r.tasks = c.tasks.load(std::memory_order_relaxed);
  r.busy_ns = c.busy_ns.load(std::memory_order_relaxed);
  r.dropped = c.dropped.load(std::memory_order_relaxed);
  r.pid = c.pid.load(std::memory_order_relaxed);
  for (std::size_t k = 0; k < histogram_buckets; ++k)
    r.hist[k] = c.hist[k].load(std::memory_order_relaxed);
  return r;
}

}  // namespace shoal
