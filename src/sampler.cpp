#include "shoal/sampler.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>

#include "shoal/check.hpp"
#include "shoal/loop_timer.hpp"
#include "shoal/detail/futex.hpp"
#include "shoal/shm_segment.hpp"

namespace shoal {


struct RingRegion {
  std::unique_ptr<SharedSegment> segment;  // process pools
  void* heap = nullptr;                    // the threads backend
  EventRings rings;
  ~RingRegion() { std::free(heap); }
};

namespace {

// Reads a small /proc or /sys file into buf (NUL-terminated); length or -1.
// Plain syscalls: no stdio lock a forked child could inherit held.
long read_small(const char* path, char* buf, std::size_t size) {
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  std::size_t got = 0;
  while (got + 1 < size) {
    const ssize_t n = ::read(fd, buf + got, size - 1 - got);
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  ::close(fd);
  buf[got] = '\0';
  return static_cast<long>(got);
}

std::uint64_t read_u64_file(const std::string& path) {
  if (path.empty()) return 0;
  char buf[64];
  if (read_small(path.c_str(), buf, sizeof buf) <= 0) return 0;
  return std::strtoull(buf, nullptr, 10);
}

// utime + stime of a /proc/.../stat line, in ns (fields 14 and 15, after the
// command in parentheses, which may itself hold spaces and parentheses).
std::uint64_t stat_cpu_ns(const char* path) {
  char buf[1024];
  if (read_small(path, buf, sizeof buf) <= 0) return 0;
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr) return 0;
  ++p;
  // p: " S ppid ..."; utime is the 12th field after the command.
  for (int field = 0; field < 11 && *p; ++field) {
    while (*p == ' ') ++p;
    while (*p && *p != ' ') ++p;
  }
  char* end = nullptr;
  const std::uint64_t utime = std::strtoull(p, &end, 10);
  const std::uint64_t stime = std::strtoull(end, nullptr, 10);
  static const long hz = ::sysconf(_SC_CLK_TCK);
  return (utime + stime) * (1'000'000'000ull / static_cast<std::uint64_t>(hz > 0 ? hz : 100));
}

std::uint64_t statm_rss(const char* path) {
  char buf[256];
  if (read_small(path, buf, sizeof buf) <= 0) return 0;
  char* end = nullptr;
  std::strtoull(buf, &end, 10);
  static const long page = ::sysconf(_SC_PAGESIZE);
  return std::strtoull(end, nullptr, 10) * static_cast<std::uint64_t>(page);
}

std::uint64_t shm_bytes() {
  DIR* d = ::opendir("/dev/shm");
  if (d == nullptr) return 0;
  std::uint64_t total = 0;
  const int dfd = ::dirfd(d);
  while (const dirent* e = ::readdir(d)) {
    if (std::strncmp(e->d_name, segment_prefix, std::strlen(segment_prefix)) != 0) continue;
    struct stat st;
    if (::fstatat(dfd, e->d_name, &st, 0) == 0)
      total += static_cast<std::uint64_t>(st.st_blocks) * 512;
  }
  ::closedir(d);
  return total;
}

// The cgroup v2 memory files of this process, or v1's; "" if none.
std::pair<std::string, std::string> cgroup_memory_paths() {
  char buf[4096];
  if (read_small("/proc/self/cgroup", buf, sizeof buf) > 0) {
    for (char* line = std::strtok(buf, "\n"); line; line = std::strtok(nullptr, "\n")) {
      if (std::strncmp(line, "0::", 3) == 0) {
        std::string dir = std::string("/sys/fs/cgroup") + (line + 3);
        if (!dir.empty() && dir.back() == '/') dir.pop_back();
        if (::access((dir + "/memory.current").c_str(), R_OK) == 0)
          return {dir + "/memory.current",
                  ::access((dir + "/memory.peak").c_str(), R_OK) == 0 ? dir + "/memory.peak" : ""};
      }
    }
  }
  const std::string v1 = "/sys/fs/cgroup/memory/";
  if (::access((v1 + "memory.usage_in_bytes").c_str(), R_OK) == 0)
    return {v1 + "memory.usage_in_bytes", v1 + "memory.max_usage_in_bytes"};
  return {"", ""};
}

}  // namespace

RingWriter::RingWriter(std::shared_ptr<RingRegion> region, std::uint16_t pool, std::uint16_t slot)
    : region_(std::move(region)), pool_(pool), slot_(slot) {}

bool RingWriter::record(std::uint64_t task, std::int64_t start_ns, std::uint64_t bytes_out,
                        std::uint8_t outcome) const noexcept {
  TaskEvent ev;
  ev.task = task;
  ev.start = start_ns;
  ev.end = static_cast<std::int64_t>(detail::monotonic_ns());
  ev.bytes_out = bytes_out;
  ev.pool = pool_;
  ev.slot = slot_;
  ev.outcome = outcome;
  return region_->rings.record(slot_, ev);
}

void PoolLog::put(DriverEvent& ev) const {
  ev.t = static_cast<std::int64_t>(detail::monotonic_ns());
  ev.pool = pool_;
  sampler_->driver_event(ev);
}

void PoolLog::submit(std::uint64_t task, std::uint64_t fn, std::int64_t nbytes) const {
  DriverEvent ev;
  ev.kind = driver_submit;
  ev.task = task;
  ev.aux = nbytes;
  ev.a = static_cast<std::uint32_t>(fn);
  put(ev);
}

void PoolLog::submit_range(std::uint64_t first, std::int64_t count, std::uint64_t fn) const {
  DriverEvent ev;
  ev.kind = driver_range;
  ev.task = first;
  ev.aux = count;
  ev.a = static_cast<std::uint32_t>(fn);
  put(ev);
}

void PoolLog::frame(std::uint64_t first, std::uint32_t count, std::int64_t nbytes) const {
  DriverEvent ev;
  ev.kind = driver_frame;
  ev.task = first;
  ev.aux = nbytes;
  ev.a = count;
  put(ev);
}

void PoolLog::outcome(std::uint64_t task, std::uint8_t outcome, std::int64_t attempt,
                      std::int64_t start, std::int64_t pid, std::int64_t slot) const {
  DriverEvent ev;
  ev.kind = driver_outcome;
  ev.task = task;
  ev.aux = start;
  ev.outcome = outcome;
  ev.attempt = static_cast<std::uint8_t>(attempt < 0 ? 0 : attempt > 255 ? 255 : attempt);
  ev.pid = pid > 0 && pid <= 0xFFFFFFFF ? static_cast<std::uint32_t>(pid) : 0;
  ev.slot = slot >= 0 && slot < 0xFFFF ? static_cast<std::uint16_t>(slot) : 0xFFFF;
  put(ev);
}

Sampler::Sampler(Options options)
    : options_(std::move(options)),
      writer_(options_.path),
      start_ns_(static_cast<std::int64_t>(detail::monotonic_ns())) {
  SHOAL_CHECK(options_.hz > 0 && options_.hz <= 1000, "the monitor's sample rate must be in (0, 1000] Hz");
  if (options_.ring_capacity < 2) options_.ring_capacity = 2;
  core_prev_.assign(options_.cpu_ids.size(), {0, 0});
  std::tie(mem_current_path_, mem_peak_path_) = cgroup_memory_paths();
  if (options_.gpu)
    gpu_ = NvmlProbe::open(gpu_note_);
  else
    gpu_note_ = "GPU samples were not asked for";
}

std::vector<std::string> Sampler::gpu_names() const {
  return gpu_ ? gpu_->names() : std::vector<std::string>{};
}

Sampler::~Sampler() {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    stopping_ = true;
  }
  stop_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Sampler::start() {
  SHOAL_CHECK(!thread_.joinable(), "the monitor's sampler is already running");
  sample(static_cast<std::int64_t>(detail::monotonic_ns()));  // the baseline of every rate
  thread_ = std::thread([this] { run(); });
  // Named from here too, so that a fork check right after start() (the
  // processes backend's _can_fork reads /proc/self/task/*/comm) sees it.
  ::pthread_setname_np(thread_.native_handle(), "shoal-monitor");
}

void Sampler::run() {
  ::pthread_setname_np(::pthread_self(), "shoal-monitor");
  clockid_t cid;
  const bool have_clock = ::pthread_getcpuclockid(::pthread_self(), &cid) == 0;
  const auto period = std::chrono::nanoseconds(static_cast<std::int64_t>(1e9 / options_.hz));
  auto next = std::chrono::steady_clock::now() + period;
  std::unique_lock<std::mutex> lock(stop_mu_);
  while (!stopping_) {
    if (stop_cv_.wait_until(lock, next, [this] { return stopping_; })) break;
    lock.unlock();
    tick();
    if (have_clock) {
      timespec ts;
      if (::clock_gettime(cid, &ts) == 0)
        thread_cpu_ns_.store(static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull +
                                 static_cast<std::uint64_t>(ts.tv_nsec),
                             std::memory_order_relaxed);
    }
    next += period;
    const auto now = std::chrono::steady_clock::now();
    if (next < now) next = now + period;  // a slow tick (a swapped-out machine): no burst after
    lock.lock();
  }
}

void Sampler::stop(const std::string& end_json) {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    if (stopped_) return;
    stopped_ = stopping_ = true;
  }
  accepting_.store(false, std::memory_order_relaxed);
  stop_cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  tick();
  append_json(ChunkType::end, end_json);
  writer_.close();
}

bool Sampler::append_json(ChunkType type, const std::string& json) {
  return writer_.append(type, json.data(), json.size());
}

void Sampler::driver_event(const DriverEvent& ev) {
  if (!accepting_.load(std::memory_order_relaxed)) return;
  std::lock_guard<std::mutex> lock(log_mu_);
  driver_log_.push_back(ev);
}

void Sampler::native(const NativeRecord& rec) {
  if (!accepting_.load(std::memory_order_relaxed)) return;
  std::lock_guard<std::mutex> lock(log_mu_);
  native_log_.push_back(rec);
}

void Sampler::native_loop(const LoopTimer& timer) {
  if (!accepting_.load(std::memory_order_relaxed)) return;
  const std::uint32_t call = next_native_call();
  const auto end = static_cast<std::int64_t>(detail::monotonic_ns());
  std::lock_guard<std::mutex> lock(log_mu_);
  for (int i = 0; i < timer.slots(); ++i) {
    const std::uint64_t busy = timer.busy(i);
    if (busy > 0 || i == 0)
      native_log_.push_back(NativeRecord{call, timer.start_ns(), end, static_cast<std::uint32_t>(i), busy});
  }
}

std::string Sampler::add_rings(std::uint16_t pool, std::size_t rings, bool shared) {
  auto region = std::make_shared<RingRegion>();
  const std::size_t bytes = EventRings::bytes_for(rings, options_.ring_capacity);
  void* base = nullptr;
  if (shared) {
    region->segment = std::make_unique<SharedSegment>(SharedSegment::create(bytes));
    base = region->segment->data();
  } else {
    base = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (base == nullptr) throw std::bad_alloc();
    std::memset(base, 0, bytes);
    region->heap = base;
  }
  region->rings = EventRings::format(base, bytes, rings, options_.ring_capacity);
  std::lock_guard<std::mutex> lock(pools_mu_);
  Pool& p = pools_[pool];
  p.region = region;
  p.last.assign(rings, RingCounters{});
  return shared ? region->segment->name() : std::string();
}

RingWriter Sampler::thread_writer(std::uint16_t pool, std::uint16_t slot) {
  std::lock_guard<std::mutex> lock(pools_mu_);
  auto it = pools_.find(pool);
  SHOAL_CHECK(it != pools_.end(), "no monitor rings for this pool");
  SHOAL_CHECK(slot < it->second.region->rings.rings(), "monitor ring index out of range");
  return RingWriter(it->second.region, pool, slot);
}

void Sampler::remove_rings(std::uint16_t pool) {
  std::lock_guard<std::mutex> tick_lock(tick_mu_);
  std::vector<TaskEvent> events;
  std::vector<CounterRecord> counters;
  {
    std::lock_guard<std::mutex> lock(pools_mu_);
    auto it = pools_.find(pool);
    if (it == pools_.end()) return;
    drain_pool(pool, it->second, events, counters);
    for (std::size_t i = 0; i < it->second.region->rings.rings(); ++i)
      dropped_gone_ += it->second.region->rings.counters(i).dropped;
    pools_.erase(it);
  }
  append_records(ChunkType::task_events, events);
  append_records(ChunkType::counters, counters);
}

void Sampler::watch(std::uint16_t pool, std::uint16_t slot, std::int64_t pid, std::int64_t tid) {
  std::lock_guard<std::mutex> lock(pools_mu_);
  watched_[{pool, slot}] = Watched{pid, tid};
}

void Sampler::unwatch(std::uint16_t pool, std::uint16_t slot) {
  std::lock_guard<std::mutex> lock(pools_mu_);
  watched_.erase({pool, slot});
}

std::uint64_t Sampler::dropped() const {
  std::lock_guard<std::mutex> lock(pools_mu_);
  std::uint64_t n = dropped_gone_;
  for (const auto& [id, p] : pools_)
    for (std::size_t i = 0; i < p.region->rings.rings(); ++i) n += p.region->rings.counters(i).dropped;
  return n;
}

void Sampler::drain_pool(std::uint16_t pool, Pool& p, std::vector<TaskEvent>& events,
                         std::vector<CounterRecord>& counters) {
  const EventRings& rings = p.region->rings;
  for (std::size_t i = 0; i < rings.rings(); ++i) {
    rings.drain(i, events);
    const RingCounters c = rings.counters(i);
    RingCounters& last = p.last[i];
    if (c.tasks == last.tasks && c.dropped == last.dropped && c.pid == last.pid) continue;
    last = c;
    CounterRecord r{};
    r.pool = pool;
    r.slot = static_cast<std::uint16_t>(i);
    r.pid = c.pid;
    r.tasks = c.tasks;
    r.busy_ns = c.busy_ns;
    r.dropped = c.dropped;
    std::memcpy(r.hist, c.hist, sizeof r.hist);
    counters.push_back(r);
  }
}

template <class T>
void Sampler::append_records(ChunkType type, const std::vector<T>& records) {
  // Chunks of at most 1 M records (48 MiB of task events), under the format's limit.
  constexpr std::size_t per_chunk = 1 << 20;
  for (std::size_t at = 0; at < records.size(); at += per_chunk) {
    const std::size_t n = std::min(per_chunk, records.size() - at);
    writer_.append(type, records.data() + at, n * sizeof(T), sizeof(T));
  }
}

void Sampler::tick() {
  std::lock_guard<std::mutex> tick_lock(tick_mu_);
  std::vector<TaskEvent> events;
  std::vector<CounterRecord> counters;
  {
    std::lock_guard<std::mutex> lock(pools_mu_);
    for (auto& [id, p] : pools_) drain_pool(id, p, events, counters);
  }
  std::vector<DriverEvent> driver;
  std::vector<NativeRecord> native;
  {
    std::lock_guard<std::mutex> lock(log_mu_);
    driver.swap(driver_log_);
    native.swap(native_log_);
  }
  // Driver events first: a reader of a cut file sees a task's submit before
  // (or with) its end.
  append_records(ChunkType::driver_events, driver);
  append_records(ChunkType::task_events, events);
  append_records(ChunkType::counters, counters);
  append_records(ChunkType::native, native);
  sample(static_cast<std::int64_t>(detail::monotonic_ns()));
  ticks_.fetch_add(1, std::memory_order_relaxed);
}

void Sampler::sample(std::int64_t now) {
  // Per-core busy fractions since the last sample, for the job's cores.
  static thread_local std::string stat_buf;
  stat_buf.resize(1 << 16);
  const long n = read_small("/proc/stat", stat_buf.data(), stat_buf.size());
  std::uint32_t procs_running = 0;
  std::vector<float> busy(options_.cpu_ids.size(), 0.0f);
  bool have_cores = false;
  if (n > 0) {
    const char* p = stat_buf.data();
    while (*p) {
      const char* eol = std::strchr(p, '\n');
      if (std::strncmp(p, "cpu", 3) == 0 && p[3] >= '0' && p[3] <= '9') {
        char* q = nullptr;
        const long cpu = std::strtol(p + 3, &q, 10);
        std::uint64_t v[8] = {};
        for (auto& x : v) x = std::strtoull(q, &q, 10);
        const std::uint64_t total = v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
        const std::uint64_t idle = v[3] + v[4];
        for (std::size_t k = 0; k < options_.cpu_ids.size(); ++k) {
          if (options_.cpu_ids[k] != cpu) continue;
          auto& [pb, pt] = core_prev_[k];
          const std::uint64_t b = total - idle;
          if (pt != 0 && total > pt) busy[k] = static_cast<float>(b - pb) / static_cast<float>(total - pt);
          pb = b;
          pt = total;
          have_cores = true;
        }
      } else if (std::strncmp(p, "procs_running ", 14) == 0) {
        procs_running = static_cast<std::uint32_t>(std::strtoul(p + 14, nullptr, 10));
      }
      if (eol == nullptr) break;
      p = eol + 1;
    }
  }
  if (have_cores) {
    std::string row(sizeof(std::int64_t) + busy.size() * sizeof(float), '\0');
    std::memcpy(row.data(), &now, sizeof now);
    std::memcpy(row.data() + sizeof now, busy.data(), busy.size() * sizeof(float));
    writer_.append(ChunkType::core_samples, row.data(), row.size(), row.size());
  }
  std::vector<std::pair<std::pair<std::uint16_t, std::uint16_t>, Watched>> watched;
  {
    std::lock_guard<std::mutex> lock(pools_mu_);
    watched.assign(watched_.begin(), watched_.end());
  }
  std::vector<WorkerSampleRecord> rows;
  rows.reserve(watched.size());
  char path[96];
  std::uint64_t own_rss = 0;
  for (const auto& [key, w] : watched) {
    WorkerSampleRecord r{};
    r.t = now;
    r.pool = key.first;
    r.slot = key.second;
    r.pid = static_cast<std::uint32_t>(w.pid);
    if (w.pid > 0) {
      std::snprintf(path, sizeof path, "/proc/%lld/stat", static_cast<long long>(w.pid));
      r.cpu_ns = stat_cpu_ns(path);
      std::snprintf(path, sizeof path, "/proc/%lld/statm", static_cast<long long>(w.pid));
      r.rss = statm_rss(path);
    } else {
      std::snprintf(path, sizeof path, "/proc/self/task/%lld/stat", static_cast<long long>(w.tid));
      r.cpu_ns = stat_cpu_ns(path);
      if (own_rss == 0) own_rss = statm_rss("/proc/self/statm");
      r.rss = own_rss;
    }
    rows.push_back(r);
  }
  append_records(ChunkType::worker_samples, rows);
  SystemSampleRecord s{};
  s.t = now;
  s.procs_running = procs_running;
  s.shm_bytes = shm_bytes();
  s.mem_current = read_u64_file(mem_current_path_);
  const std::uint64_t peak = read_u64_file(mem_peak_path_);
  if (s.mem_current > mem_peak_seen_) mem_peak_seen_ = s.mem_current;
  s.mem_peak = peak > mem_peak_seen_ ? peak : mem_peak_seen_;
  writer_.append(ChunkType::system_samples, &s, sizeof s, sizeof s);
  if (gpu_ && now >= next_gpu_ns_) {  // 1 Hz
    next_gpu_ns_ = now + 1'000'000'000;
    std::vector<GpuSampleRecord> g;
    gpu_->sample(now, g);
    append_records(ChunkType::gpu_samples, g);
  }
}

}  // namespace shoal
