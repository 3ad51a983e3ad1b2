// shoal/task_ring.hpp — a single-producer single-consumer byte ring of frames
// in shared memory, with futex sleeping on both ends.
//
//   producer process                      consumer process
//   try_push(frame) ──memcpy──> [ data ring of `capacity` bytes ] ──memcpy──> try_pop(frame)
//        │ tail.store (seq_cst)                              head.store (seq_cst) │
//        └─ reads consumer_waiting: 1? wake ─┐      ┌─ reads producer_waiting: 1? wake
//                                             v      v
//                     consumer sleeps in wait_readable()   producer sleeps in wait_writable()
//
// Positions are free-running u64 byte counters (never wrap in practice);
// offset = position & (capacity - 1). A frame may straddle the end of the
// buffer: it is copied in two parts, so no space is wasted on padding frames.
//
// Lost wake-ups: a sleeper stores waiting = 1 (seq_cst), re-checks the
// position (seq_cst), then FUTEX_WAITs on waiting == 1. The other side stores
// the position (seq_cst), then loads waiting (seq_cst). Sequential consistency
// guarantees that one of the two sees the other's store, so either the sleeper
// does not sleep or the other side wakes it.
//
// The consumer never trusts the producer (a worker runs arbitrary code and may
// scribble on the ring): try_pop() validates positions and headers and throws
// shoal::Error on anything inconsistent instead of reading out of bounds.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "shoal/check.hpp"
#include "shoal/detail/futex.hpp"
#include "shoal/frame.hpp"

namespace shoal {

// The shared part of a ring: lives in the shared segment, before its data.
// Producer-written and consumer-written fields sit on separate cache lines so
// that the two processes do not bounce one line on every frame.
struct RingControl {
  // Written by the producer only (release of the frame bytes: seq_cst store),
  // read by the consumer (acquire of the frame bytes: seq_cst load).
  alignas(64) std::atomic<std::uint64_t> tail{0};
  // Set to 1 by the producer before it sleeps waiting for space; the consumer
  // clears it and wakes the producer after freeing space. Futex word.
  std::atomic<std::uint32_t> producer_waiting{0};
  // Frames pushed so far (producer only; stored before tail).
  std::atomic<std::uint64_t> frames_in{0};
  // Written by the consumer only (it has finished reading the bytes before:
  // seq_cst store), read by the producer before reusing the space.
  alignas(64) std::atomic<std::uint64_t> head{0};
  // Set to 1 by the consumer before it sleeps waiting for data; the producer
  // clears it and wakes the consumer after publishing a frame. Futex word.
  std::atomic<std::uint32_t> consumer_waiting{0};
  // Frames popped so far (consumer only; stored before head). With frames_in,
  // how many frames the consumer has not taken yet (queued()).
  std::atomic<std::uint64_t> frames_out{0};
  // Immutable after initialization.
  alignas(64) std::uint64_t capacity = 0;
};

class TaskRing {
 public:
  // Minimum capacity: room for a header and a little payload.
  static constexpr std::size_t min_capacity = 256;

  // Constructs the control block at `ctl` (creator only, before any other
  // process maps it). capacity must be a power of two >= min_capacity.
  static void initialize(RingControl* ctl, std::size_t capacity);

  TaskRing() = default;
  // A view over an initialized ring; `data` has ctl->capacity bytes.
  TaskRing(RingControl* ctl, unsigned char* data) noexcept
      : ctl_(ctl), data_(data), capacity_(ctl->capacity) {}

  std::size_t capacity() const noexcept { return capacity_; }
  // Largest payload one frame can carry.
  std::size_t max_payload() const noexcept { return capacity_ - sizeof(FrameHeader) - frame_align; }

  // ---- producer side ----
  // Appends one frame if it fits now; never blocks. Does not wake the consumer
  // (call notify_consumer() once after a batch of pushes).
  bool try_push(std::uint64_t task_id, FrameKind kind, std::uint32_t flags, const void* payload,
                std::size_t length);
  // Wakes the consumer if it announced that it sleeps.
  void notify_consumer() noexcept;
  // Spins for spin_ns, then sleeps until `bytes` of payload fit or timeout_ns
  // passed (< 0: no limit). Returns whether they fit.
  bool wait_writable(std::size_t length, std::int64_t timeout_ns, std::int64_t spin_ns) noexcept;

  // ---- consumer side ----
  // Pops one frame: sink(header) must return a pointer to header.length
  // writable bytes (or nullptr to drop the payload). Returns false if empty.
  // Throws shoal::Error if the ring is corrupt.
  template <class Sink>
  bool try_pop(FrameHeader& header, Sink&& sink);
  // Frames pushed and not popped yet: exact on the producer's side (the
  // consumer may have taken more by the time it returns). A consumer that
  // scribbles on the counters makes this wrong, never out of range.
  std::uint64_t queued() const noexcept {
    const std::uint64_t in = ctl_->frames_in.load(std::memory_order_relaxed);
    const std::uint64_t out = ctl_->frames_out.load(std::memory_order_acquire);
    return in > out ? in - out : 0;
  }
  bool empty() const noexcept {
    return ctl_->tail.load(std::memory_order_seq_cst) == ctl_->head.load(std::memory_order_relaxed);
  }
  // Spins for spin_ns, then sleeps until a frame is there or timeout_ns passed
  // (< 0: no limit), or someone called wake_consumer(), or *stop became
  // non-zero (when given). Returns !empty(). The stop flag closes the race of a
  // wake_consumer() that lands before the consumer announced its sleep: the
  // waker stores *stop (seq_cst) before waking, the consumer announces
  // (seq_cst) before reading *stop, so one of the two sees the other.
  bool wait_readable(std::int64_t timeout_ns, std::int64_t spin_ns,
                     const std::atomic<std::uint32_t>* stop = nullptr) noexcept;
  // Forces a sleeping consumer awake (shutdown).
  void wake_consumer() noexcept;

  // Empties the ring. Only when neither end is in use (a dead worker's slot).
  void reset() noexcept;

 private:
  void copy_in(std::uint64_t pos, const void* src, std::size_t n) noexcept;
  void copy_out(std::uint64_t pos, void* dst, std::size_t n) const noexcept;
  void release(std::uint64_t new_head) noexcept;
  [[noreturn]] void corrupt(const char* what) const;

  RingControl* ctl_ = nullptr;
  unsigned char* data_ = nullptr;
  std::size_t capacity_ = 0;
};

template <class Sink>
bool TaskRing::try_pop(FrameHeader& header, Sink&& sink) {
  const std::uint64_t head = ctl_->head.load(std::memory_order_relaxed);  // only we write it
  const std::uint64_t tail = ctl_->tail.load(std::memory_order_seq_cst);
  if (tail == head) return false;
  const std::uint64_t used = tail - head;
  if (used > capacity_ || used < sizeof(FrameHeader)) corrupt("positions out of range");
  unsigned char raw[sizeof(FrameHeader)];
  copy_out(head, raw, sizeof raw);
  // Only the header decides how much to read; the header is checked against
  // what the ring really holds, so a scribbled length cannot overrun.
  FrameStatus st = decode_frame_header(raw, static_cast<std::size_t>(used), header);
  if (st != FrameStatus::Ok) corrupt(frame_status_text(st));
  if (frame_footprint(header.length) > used) corrupt("frame padding beyond the tail");
  unsigned char* dst = sink(static_cast<const FrameHeader&>(header));
  if (dst != nullptr && header.length > 0) copy_out(head + sizeof(FrameHeader), dst, header.length);
  ctl_->frames_out.store(ctl_->frames_out.load(std::memory_order_relaxed) + 1,
                         std::memory_order_release);
  release(head + frame_footprint(header.length));
  return true;
}

}  // namespace shoal
