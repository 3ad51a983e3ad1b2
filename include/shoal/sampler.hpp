// shoal/sampler.hpp — the driver side of the monitor: one Sampler thread.
//
//   worker processes ──TaskEvent──> EventRings in a SharedSegment ─┐
//   pool threads ─────TaskEvent──> EventRings on the heap ─────────┤
//   the driver's ledger ──DriverEvent──> log (mutex, swapped) ─────┤  every 1/hz s:
//   parallel_for / reduce ──NativeRecord──> log (mutex) ───────────┼─> drain, sample
//   /proc/stat, /proc/<pid>/stat|statm, /proc/self/task/<tid>/stat ┤   /proc, append
//   /dev/shm/shoal.*, cgroup memory.current|peak ──────────────────┘   chunks ──> MonitorWriter
//
// The task path only ever writes to a ring (never blocks) or appends to a
// vector under an uncontended mutex (the driver's rare events); the file is
// written by the Sampler thread alone, once per tick, so a job that is killed
// leaves everything up to its last tick on disk.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "shoal/event_ring.hpp"
#include "shoal/monitor_file.hpp"
#include "shoal/nvml_probe.hpp"

namespace shoal {

// What the driver's ledger knows about a task. kind: see DriverEventKind.
struct DriverEvent {
  std::uint64_t task = 0;
  std::int64_t t = 0;       // when (CLOCK_MONOTONIC ns)
  std::int64_t aux = 0;     // submit: bytes in; range: count; frame: bytes; outcome: start or -1
  std::uint32_t a = 0;      // submit, range: fn id; frame: task count
  std::uint32_t pid = 0;    // outcome: the worker it ran on (0: none)
  std::uint16_t pool = 0;
  std::uint16_t slot = 0;   // outcome: its worker slot (0xFFFF: none)
  std::uint8_t kind = 0;
  std::uint8_t outcome = 0;
  std::uint8_t attempt = 0;
  std::uint8_t pad = 0;
};
static_assert(sizeof(DriverEvent) == 40);

enum DriverEventKind : std::uint8_t {
  driver_submit = 1,  // one task submitted
  driver_range = 2,   // `aux` map items submitted, ids task .. task+aux-1
  driver_frame = 3,   // a Batch frame of `a` items from id `task` on, `aux` bytes
  driver_outcome = 4, // the driver ended (or retried) an attempt itself
};

#pragma pack(push, 1)
struct CounterRecord {
  std::uint16_t pool;
  std::uint16_t slot;
  std::uint32_t pid;
  std::uint64_t tasks;
  std::uint64_t busy_ns;
  std::uint64_t dropped;
  std::uint64_t hist[histogram_buckets];
};
struct WorkerSampleRecord {
  std::int64_t t;
  std::uint16_t pool;
  std::uint16_t slot;
  std::uint32_t pid;
  std::uint64_t cpu_ns;
  std::uint64_t rss;
};
struct SystemSampleRecord {  // = SYSTEM_SAMPLE_DTYPE
  std::int64_t t;
  std::uint32_t procs_running;
  std::uint64_t shm_bytes;
  std::uint64_t mem_current;
  std::uint64_t mem_peak;
};
struct NativeRecord {  // = NATIVE_DTYPE
  std::uint32_t call;
  std::int64_t start;
  std::int64_t end;
  std::uint32_t thread;
  std::uint64_t busy_ns;
};
#pragma pack(pop)
static_assert(sizeof(CounterRecord) == 352 && sizeof(WorkerSampleRecord) == 32 &&
              sizeof(SystemSampleRecord) == 36 && sizeof(NativeRecord) == 32);

// Memory holding one pool's rings: a SharedSegment (process pools) or heap.
struct RingRegion;

// A pool thread's handle on its ring (the threads backend): the producer side.
class RingWriter {
 public:
  RingWriter(std::shared_ptr<RingRegion> region, std::uint16_t pool, std::uint16_t slot);
  // Records a task that began at start_ns and ends now. Never blocks.
  bool record(std::uint64_t task, std::int64_t start_ns, std::uint64_t bytes_out,
              std::uint8_t outcome) const noexcept;

 private:
  std::shared_ptr<RingRegion> region_;
  std::uint16_t pool_;
  std::uint16_t slot_;
};

class Sampler;

// One pool's ledger events, stamped with the pool's number and the time
// (the driver's side; any thread). Each call is one DriverEvent.
class PoolLog {
 public:
  PoolLog(Sampler& sampler, std::uint16_t pool) noexcept : sampler_(&sampler), pool_(pool) {}
  // fn: the pool's function id (its low 32 bits are recorded).
  void submit(std::uint64_t task, std::uint64_t fn, std::int64_t nbytes) const;
  void submit_range(std::uint64_t first, std::int64_t count, std::uint64_t fn) const;
  void frame(std::uint64_t first, std::uint32_t count, std::int64_t nbytes) const;
  // pid, slot: the worker it ran on, as the transport names it (out of the
  // record's range: none); start -1 if unknown.
  void outcome(std::uint64_t task, std::uint8_t outcome, std::int64_t attempt, std::int64_t start,
               std::int64_t pid, std::int64_t slot) const;

 private:
  void put(DriverEvent& ev) const;
  Sampler* sampler_;
  std::uint16_t pool_;
};

class Sampler {
 public:
  struct Options {
    std::string path;
    double hz = 10.0;
    std::vector<int> cpu_ids;        // the cores the job may use
    std::size_t ring_capacity = 32768;  // records per worker ring
    bool gpu = true;                    // GPU samples at 1 Hz where NVML finds GPUs
  };

  // Opens the file (throws SystemError) and records the start time; the
  // thread starts with start().
  explicit Sampler(Options options);
  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;
  ~Sampler();

  std::int64_t start_ns() const noexcept { return start_ns_; }
  std::size_t ring_capacity() const noexcept { return options_.ring_capacity; }
  void start();
  // A last tick, then `end_json` as the end chunk; the thread is joined.
  void stop(const std::string& end_json);
  // One tick now, on the calling thread (tests, and the final flush).
  void tick();

  bool append_json(ChunkType type, const std::string& json);
  MonitorWriter& writer() noexcept { return writer_; }

  // ---- the driver's ledger (any thread) ----
  void driver_event(const DriverEvent& ev);
  void native(const NativeRecord& rec);
  // One native loop timed by a LoopTimer: a record per thread that ran a chunk.
  void native_loop(const class LoopTimer& timer);
  std::uint32_t next_native_call() noexcept { return native_calls_.fetch_add(1); }

  // ---- pools ----
  // Rings for `rings` workers of pool `pool`, in a new SharedSegment
  // (returns its name, for the workers to attach) or on the heap ("").
  std::string add_rings(std::uint16_t pool, std::size_t rings, bool shared);
  RingWriter thread_writer(std::uint16_t pool, std::uint16_t slot);
  // Drains the pool's rings one last time and lets their memory go.
  void remove_rings(std::uint16_t pool);
  // The sampler reads pid's (tid's, for a thread: pid 0) CPU time and RSS.
  void watch(std::uint16_t pool, std::uint16_t slot, std::int64_t pid, std::int64_t tid);
  void unwatch(std::uint16_t pool, std::uint16_t slot);

  // Records dropped so far (all rings ever added).
  std::uint64_t dropped() const;
  // CPU time of the sampler thread so far (0 before it started).
  std::uint64_t thread_cpu_ns() const noexcept {
    return thread_cpu_ns_.load(std::memory_order_relaxed);
  }
  std::uint64_t ticks() const noexcept { return ticks_.load(std::memory_order_relaxed); }
  // The GPUs sampled (empty: none), and why none are where that is so.
  std::vector<std::string> gpu_names() const;
  const std::string& gpu_note() const noexcept { return gpu_note_; }

 private:
  struct Pool {
    std::shared_ptr<RingRegion> region;
    std::vector<RingCounters> last;  // the counters last written
  };
  struct Watched {
    std::int64_t pid = 0;
    std::int64_t tid = 0;
  };
  void run();
  void drain_pool(std::uint16_t pool, Pool& p, std::vector<TaskEvent>& events,
                  std::vector<CounterRecord>& counters);
  void sample(std::int64_t now);
  template <class T>
  void append_records(ChunkType type, const std::vector<T>& records);

  Options options_;
  MonitorWriter writer_;
  std::int64_t start_ns_ = 0;

  // Serializes ticks (the thread's and a caller's tick()/stop()).
  std::mutex tick_mu_;
  // Guards pools_, watched_, dropped_gone_: changed by driver threads (pool
  // start/stop, worker start/death), read by each tick.
  mutable std::mutex pools_mu_;
  std::map<std::uint16_t, Pool> pools_;
  std::map<std::pair<std::uint16_t, std::uint16_t>, Watched> watched_;
  std::uint64_t dropped_gone_ = 0;  // drops of removed pools

  // The driver's events and native records since the last tick: appended by
  // any driver thread under log_mu_, swapped out by the tick.
  std::mutex log_mu_;
  std::vector<DriverEvent> driver_log_;
  std::vector<NativeRecord> native_log_;
  std::atomic<std::uint32_t> native_calls_{0};

  // /proc state between ticks (tick thread only, under tick_mu_).
  std::vector<std::pair<std::uint64_t, std::uint64_t>> core_prev_;  // (busy, total) per cpu_id
  std::string mem_current_path_, mem_peak_path_;
  std::uint64_t mem_peak_seen_ = 0;
  std::unique_ptr<NvmlProbe> gpu_;  // null: no GPU samples (gpu_note_ says why)
  std::string gpu_note_;
  std::int64_t next_gpu_ns_ = 0;

  // Written by the sampler thread (relaxed), read by anyone: statistics only.
  std::atomic<std::uint64_t> thread_cpu_ns_{0};
  std::atomic<std::uint64_t> ticks_{0};

  // False once stop() began: the ledger's events of a pool that outlives
  // its monitor are dropped at the door instead of piling up unread. Set by
  // stop(), read (relaxed) by every driver_event()/native(): a late event
  // that still gets in is only never written.
  std::atomic<bool> accepting_{true};

  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stopping_ = false;  // guarded by stop_mu_
  bool stopped_ = false;   // stop() ran (guarded by stop_mu_)
  std::thread thread_;
};

}  // namespace shoal
