// Allocation::detect: read every limit on this process's CPUs, keep the smallest.
//
//   environ / Environment ──► SLURM_*, OMPI_*, PMI_*, OMP_NUM_THREADS ──┐
//   <root>/proc/self/cgroup ──► cgroup path ──► cpu.max | cfs_quota_us ─┤
//                                          └──► cpuset.cpus.effective ──┼─► candidates ─► min ─► cpus
//   sched_getaffinity | <root>/proc/self/status ─────────────────────────┘
//
// Nothing here throws on bad input: a malformed variable or an unreadable
// file becomes a warning naming it, and the candidate is simply not added.
// Variables that were ignored are reported once the final count is known, so
// each warning can say which fallback was used instead.
#include "shoal/allocation.hpp"

#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstring>
#include <sstream>
#include <thread>

extern char** environ;

namespace shoal {

Environment current_environment() {
  Environment env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view kv(*e);
    auto eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    env.emplace(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
  }
  return env;
}

// ---------------------------------------------------------------- parsers

namespace {

std::string_view trim(std::string_view s) {
  const char* blanks = " \t\r\n";
  auto b = s.find_first_not_of(blanks);
  if (b == std::string_view::npos) return {};
  auto e = s.find_last_not_of(blanks);
  return s.substr(b, e - b + 1);
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    auto pos = s.find(sep, start);
    parts.push_back(s.substr(start, pos == std::string_view::npos ? std::string_view::npos : pos - start));
    if (pos == std::string_view::npos) break;
    start = pos + 1;
  }
  return parts;
}

// CPU ids and counts above this are treated as malformed: it keeps a hostile
// "0-2000000000" from allocating gigabytes (real machines have < 2^16 CPUs).
constexpr long long kMaxCpuId = 1 << 20;
constexpr long long kMaxRepeat = 1 << 20;

}  // namespace

namespace parse {

std::optional<long long> integer(std::string_view s) {
  s = trim(s);
  if (s.empty()) return std::nullopt;
  if (s.front() == '+') s.remove_prefix(1);
  long long v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<std::vector<int>> cpu_list(std::string_view s) {
  std::vector<int> cpus;
  s = trim(s);
  if (s.empty()) return cpus;
  for (auto part : split(s, ',')) {
    auto dash = part.find('-');
    auto lo = integer(part.substr(0, dash));
    auto hi = dash == std::string_view::npos ? lo : integer(part.substr(dash + 1));
    if (!lo || !hi || *lo < 0 || *hi < *lo || *hi > kMaxCpuId) return std::nullopt;
    for (long long c = *lo; c <= *hi; ++c) cpus.push_back(static_cast<int>(c));
  }
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  return cpus;
}

std::optional<std::vector<int>> slurm_count_list(std::string_view s) {
  std::vector<int> counts;
  s = trim(s);
  if (s.empty()) return std::nullopt;
  long long total = 0;
  for (auto part : split(s, ',')) {
    long long repeat = 1;
    auto paren = part.find('(');
    std::string_view count_text = part.substr(0, paren);
    if (paren != std::string_view::npos) {
      auto rest = part.substr(paren);  // "(x3)"
      if (rest.size() < 4 || rest[1] != 'x' || rest.back() != ')') return std::nullopt;
      auto r = integer(rest.substr(2, rest.size() - 3));
      if (!r || *r < 1 || *r > kMaxRepeat) return std::nullopt;
      repeat = *r;
    }
    auto count = integer(count_text);
    if (!count || *count < 0 || *count > kMaxCpuId) return std::nullopt;
    total += repeat;
    if (total > kMaxRepeat) return std::nullopt;
    counts.insert(counts.end(), static_cast<size_t>(repeat), static_cast<int>(*count));
  }
  return counts;
}

Quota cgroup_v2_cpu_max(std::string_view s) {
  auto fields = split(trim(s), ' ');
  fields.erase(std::remove(fields.begin(), fields.end(), std::string_view{}), fields.end());
  if (fields.empty() || fields.size() > 2) return {};
  auto period = fields.size() == 2 ? integer(fields[1]) : std::optional<long long>(100000);
  if (!period || *period <= 0) return {};
  if (fields[0] == "max") return {true, std::nullopt};
  auto quota = integer(fields[0]);
  if (!quota || *quota <= 0) return {};
  return {true, static_cast<double>(*quota) / static_cast<double>(*period)};
}

Quota cgroup_v1_cfs(std::string_view quota_text, std::string_view period_text) {
  auto quota = integer(quota_text);
  auto period = integer(period_text);
  if (!quota || !period || *period <= 0) return {};
  if (*quota == -1) return {true, std::nullopt};
  if (*quota <= 0) return {};
  return {true, static_cast<double>(*quota) / static_cast<double>(*period)};
}

}  // namespace parse

// ---------------------------------------------------------------- detection

namespace {

struct FileRead {
  bool exists = false;  // false: ENOENT (or ENOTDIR), which callers usually treat as "not limited"
  bool ok = false;
  std::string text;
  std::string error;  // strerror when exists && !ok
};

FileRead read_file(const std::string& path) {
  FileRead r;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    r.exists = !(errno == ENOENT || errno == ENOTDIR);
    r.error = std::strerror(errno);
    return r;
  }
  r.exists = true;
  char buf[4096];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      r.error = std::strerror(errno);
      ::close(fd);
      return r;
    }
    if (n == 0) break;
    r.text.append(buf, static_cast<size_t>(n));
    if (r.text.size() > (1u << 20)) break;  // no cgroup or proc file is this big
  }
  ::close(fd);
  r.ok = true;
  return r;
}

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string fmt_cpus(double cpus) {
  std::ostringstream s;
  s << cpus;
  return s.str();
}

std::string cpu_list_text(const std::vector<int>& cpus) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += std::to_string(cpus[i]);
    if (j > i) out += '-' + std::to_string(cpus[j]);
    i = j + 1;
  }
  return out;
}

// Detection state: the allocation being filled, where to read files, and the
// variables that were ignored (reported at the end, with the fallback).
class Detector {
 public:
  Detector(const Environment& env, std::string root, bool real_affinity)
      : env_(env), root_(std::move(root)), real_affinity_(real_affinity) {
    while (!root_.empty() && root_.back() == '/') root_.pop_back();  // "/" -> "", so root_ + "/proc" works
  }

  Allocation run() {
    read_host_cpus();
    read_affinity();
    read_cgroups();
    read_slurm();
    read_omp();
    read_mpi();
    decide();
    return std::move(a_);
  }

 private:
  // -- environment helpers
  const std::string* var(const std::string& name) const {
    auto it = env_.find(name);
    return it == env_.end() ? nullptr : &it->second;
  }

  // A count variable: nullopt when unset; when set but not an integer >= min,
  // remembered as ignored and nullopt.
  std::optional<int> count_var(const std::string& name, int min = 1) {
    const std::string* v = var(name);
    if (v == nullptr) return std::nullopt;
    auto n = parse::integer(*v);
    if (!n || *n < min || *n > INT_MAX) {
      ignored_.push_back(name + "='" + *v + "' is not " +
                         (min == 0 ? "a non-negative integer" : "a positive integer"));
      return std::nullopt;
    }
    return static_cast<int>(*n);
  }

  std::optional<int> first_count_var(const std::string& a, const std::string& b, int min = 1) {
    return var(a) != nullptr ? count_var(a, min) : count_var(b, min);
  }

  std::vector<int> count_list_var(const std::string& name) {
    const std::string* v = var(name);
    if (v == nullptr) return {};
    auto list = parse::slurm_count_list(*v);
    if (!list) {
      ignored_.push_back(name + "='" + *v + "' is not a SLURM count list like '2(x3),1'");
      return {};
    }
    return *list;
  }

  std::string shown(const std::string& path) const {  // path as the user would see it
    return root_.empty() ? path : path.substr(root_.size());
  }

  void add(std::string name, std::string detail, int cpus) {
    a_.sources.push_back({std::move(name), std::move(detail), std::max(cpus, 1)});
  }

  // -- host and affinity
  void read_host_cpus() {
    auto r = read_file(root_ + "/sys/devices/system/cpu/online");
    if (r.ok) {
      if (auto l = parse::cpu_list(r.text); l && !l->empty()) {
        a_.host_cpus = static_cast<int>(l->size());
        return;
      }
      a_.warnings.push_back("/sys/devices/system/cpu/online is malformed ('" + std::string(trim(r.text)) +
                            "'); host CPU count taken from the C++ runtime");
    }
    long n = real_affinity_ ? ::sysconf(_SC_NPROCESSORS_ONLN) : 0;
    a_.host_cpus = n > 0 ? static_cast<int>(n) : static_cast<int>(std::thread::hardware_concurrency());
    if (a_.host_cpus <= 0) a_.host_cpus = 1;
  }

  void read_affinity() {
    if (!real_affinity_) {
      auto r = read_file(root_ + "/proc/self/status");
      if (r.ok) {
        std::istringstream lines(r.text);
        std::string line;
        const std::string key = "Cpus_allowed_list:";
        while (std::getline(lines, line)) {
          if (line.rfind(key, 0) != 0) continue;
          if (auto l = parse::cpu_list(line.substr(key.size())); l && !l->empty()) {
            a_.affinity = *l;
            add("CPU affinity", "/proc/self/status Cpus_allowed_list = " + cpu_list_text(*l),
                static_cast<int>(l->size()));
            return;
          }
          a_.warnings.push_back("/proc/self/status has a malformed Cpus_allowed_list ('" + line +
                                "'); the real sched_getaffinity is used");
        }
      }
    }
    // sched_getaffinity with a set sized for the host, grown on EINVAL (hosts with > CPU_SETSIZE CPUs).
    for (int n = std::max(a_.host_cpus, 1024); n <= (1 << 20); n *= 2) {
      cpu_set_t* set = CPU_ALLOC(n);
      size_t size = CPU_ALLOC_SIZE(n);
      CPU_ZERO_S(size, set);
      if (::sched_getaffinity(0, size, set) == 0) {
        for (int c = 0; c < n; ++c)
          if (CPU_ISSET_S(c, size, set)) a_.affinity.push_back(c);
        CPU_FREE(set);
        break;
      }
      int err = errno;
      CPU_FREE(set);
      if (err != EINVAL) {
        a_.warnings.push_back(std::string("sched_getaffinity failed (") + std::strerror(err) +
                              "); CPU affinity not used");
        return;
      }
    }
    if (!a_.affinity.empty())
      add("CPU affinity", "sched_getaffinity = " + cpu_list_text(a_.affinity),
          static_cast<int>(a_.affinity.size()));
  }

  // -- cgroups
  void read_cgroups() {
    auto r = read_file(root_ + "/proc/self/cgroup");
    if (!r.ok) {
      if (r.exists)
        a_.warnings.push_back("cannot read /proc/self/cgroup (" + r.error + "); cgroup limits not used");
      return;
    }
    std::optional<std::string> v1_cpu, v1_cpuset, v1_memory, v2;
    std::istringstream lines(r.text);
    std::string line;
    while (std::getline(lines, line)) {
      auto c1 = line.find(':');
      auto c2 = c1 == std::string::npos ? c1 : line.find(':', c1 + 1);
      if (c2 == std::string::npos) continue;  // not "id:controllers:path": skip the line
      std::string id = line.substr(0, c1), controllers = line.substr(c1 + 1, c2 - c1 - 1);
      std::string path = line.substr(c2 + 1);
      if (path.empty() || path[0] != '/') continue;
      if (id == "0" && controllers.empty()) {
        v2 = path;
        continue;
      }
      for (auto c : split(controllers, ',')) {
        if (c == "cpu") v1_cpu = path;
        if (c == "cpuset") v1_cpuset = path;
        if (c == "memory") v1_memory = path;
      }
    }
    const std::string base = root_ + "/sys/fs/cgroup";
    if (v1_cpu || v1_cpuset) {
      std::string cpu_mount, cpuset_mount;
      for (const char* d : {"/cpu", "/cpu,cpuacct", "/cpuacct,cpu"})
        if (cpu_mount.empty() && is_dir(base + d)) cpu_mount = base + d;
      if (is_dir(base + "/cpuset")) cpuset_mount = base + "/cpuset";
      if (v1_cpu && !cpu_mount.empty()) {
        a_.cgroup_version = "v1";
        a_.cgroup_path = *v1_cpu;
        v1_quota(cpu_mount, *v1_cpu);
      }
      if (v1_cpuset && !cpuset_mount.empty()) {
        if (a_.cgroup_version == "none") a_.cgroup_version = "v1", a_.cgroup_path = *v1_cpuset;
        cpuset(leaf(cpuset_mount, *v1_cpuset), {"cpuset.effective_cpus", "cpuset.cpus"}, "v1");
      }
      if (v1_memory && is_dir(base + "/memory"))
        memory_limit(base + "/memory", *v1_memory, "memory.limit_in_bytes");
      if (a_.cgroup_version != "none") return;
    }
    if (v2) {
      std::string mount;
      for (const char* d : {"", "/unified"})
        if (mount.empty() && read_file(base + d + "/cgroup.controllers").exists) mount = base + d;
      if (mount.empty()) return;
      a_.cgroup_version = "v2";
      a_.cgroup_path = *v2;
      v2_quota(mount, *v2);
      cpuset(leaf(mount, *v2), {"cpuset.cpus.effective", "cpuset.cpus"}, "v2");
      memory_limit(mount, *v2, "memory.max");
    }
  }

  void consider_memory(std::uint64_t bytes, std::string source) {
    if (!a_.memory_limit_bytes || bytes < *a_.memory_limit_bytes) {
      a_.memory_limit_bytes = bytes;
      a_.memory_limit_source = std::move(source);
    }
  }

  // v2 memory.max ("max" = none) or v1 memory.limit_in_bytes (near 2^63 = none), leaf to root.
  void memory_limit(const std::string& mount, const std::string& path, const char* file) {
    for (const auto& dir : ancestors(mount, path)) {
      auto f = read_file(dir + "/" + file);
      if (!f.exists) continue;
      const std::string where = shown(dir) + "/" + file;
      if (!f.ok) {
        a_.warnings.push_back("cannot read " + where + " (" + f.error + "); that memory limit is ignored");
        continue;
      }
      const std::string text(trim(f.text));
      if (text == "max") continue;
      auto n = parse::integer(text);
      if (!n || *n <= 0) {
        a_.warnings.push_back(where + " is malformed ('" + text + "'); that memory limit is ignored");
        continue;
      }
      if (*n >= (1LL << 62)) continue;  // v1 writes "unlimited" as LONG_MAX rounded to a page
      consider_memory(static_cast<std::uint64_t>(*n), where + " = " + text);
    }
  }

  // The cgroup's directory; inside a container the path from /proc/self/cgroup
  // often names the host's hierarchy while the namespace mounts the cgroup itself at the root.
  static std::string leaf(const std::string& mount, const std::string& path) {
    std::string dir = mount + (path == "/" ? "" : path);
    return is_dir(dir) ? dir : mount;
  }

  // Directories from the leaf up to the mount: a quota anywhere above also binds.
  static std::vector<std::string> ancestors(const std::string& mount, const std::string& path) {
    std::vector<std::string> dirs;
    std::string dir = leaf(mount, path);
    while (true) {
      dirs.push_back(dir);
      if (dir.size() <= mount.size()) break;
      dir = dir.substr(0, dir.rfind('/'));
    }
    return dirs;
  }

  void consider_quota(const parse::Quota& q, const std::string& name, const std::string& detail) {
    if (!q.cpus) return;
    if (!a_.cgroup_quota_cpus || *q.cpus < *a_.cgroup_quota_cpus) {
      a_.cgroup_quota_cpus = *q.cpus;
      quota_detail_ = detail + " (" + fmt_cpus(*q.cpus) + " CPUs)";
      quota_name_ = name;
    }
  }

  void v2_quota(const std::string& mount, const std::string& path) {
    for (const auto& dir : ancestors(mount, path)) {
      auto f = read_file(dir + "/cpu.max");
      if (!f.exists) continue;
      if (!f.ok) {
        a_.warnings.push_back("cannot read " + shown(dir) + "/cpu.max (" + f.error +
                              "); that cgroup quota is ignored");
        continue;
      }
      auto q = parse::cgroup_v2_cpu_max(f.text);
      if (!q.valid) {
        a_.warnings.push_back(shown(dir) + "/cpu.max is malformed ('" + std::string(trim(f.text)) +
                              "'); that cgroup quota is ignored");
        continue;
      }
      consider_quota(q, "cgroup v2 quota", shown(dir) + "/cpu.max = " + std::string(trim(f.text)));
    }
    finish_quota();
  }

  void v1_quota(const std::string& mount, const std::string& path) {
    for (const auto& dir : ancestors(mount, path)) {
      auto fq = read_file(dir + "/cpu.cfs_quota_us");
      auto fp = read_file(dir + "/cpu.cfs_period_us");
      if (!fq.exists && !fp.exists) continue;
      if (!fq.ok || !fp.ok) {
        const auto& bad = fq.ok ? fp : fq;
        a_.warnings.push_back("cannot read " + shown(dir) + (fq.ok ? "/cpu.cfs_period_us" : "/cpu.cfs_quota_us") +
                              " (" + (bad.error.empty() ? "missing" : bad.error) +
                              "); that cgroup quota is ignored");
        continue;
      }
      auto q = parse::cgroup_v1_cfs(fq.text, fp.text);
      if (!q.valid) {
        a_.warnings.push_back(shown(dir) + "/cpu.cfs_quota_us / cpu.cfs_period_us are malformed ('" +
                              std::string(trim(fq.text)) + "' / '" + std::string(trim(fp.text)) +
                              "'); that cgroup quota is ignored");
        continue;
      }
      consider_quota(q, "cgroup v1 quota",
                     shown(dir) + "/cpu.cfs_quota_us = " + std::string(trim(fq.text)) +
                         ", cpu.cfs_period_us = " + std::string(trim(fp.text)));
    }
    finish_quota();
  }

  void finish_quota() {
    if (!a_.cgroup_quota_cpus) return;
    // A quota of 1.5 CPUs keeps 2 threads busy 75% of the time: round up, never to 0.
    int n = std::max(1, static_cast<int>(std::ceil(*a_.cgroup_quota_cpus - 1e-9)));
    add(quota_name_, quota_detail_, n);
  }

  void cpuset(const std::string& dir, std::initializer_list<const char*> names, const std::string& version) {
    for (const char* name : names) {
      auto f = read_file(dir + "/" + name);
      if (!f.exists) continue;
      if (!f.ok) {
        a_.warnings.push_back("cannot read " + shown(dir) + "/" + name + " (" + f.error +
                              "); cgroup cpuset ignored");
        return;
      }
      auto l = parse::cpu_list(f.text);
      if (!l) {
        a_.warnings.push_back(shown(dir) + "/" + name + " is malformed ('" + std::string(trim(f.text)) +
                              "'); cgroup cpuset ignored");
        return;
      }
      if (l->empty()) continue;  // v2 cpuset.cpus is empty when inherited: try the next name
      a_.cgroup_cpuset = *l;
      add("cgroup " + version + " cpuset", shown(dir) + "/" + name + " = " + cpu_list_text(*l),
          static_cast<int>(l->size()));
      return;
    }
  }

  // -- SLURM
  void read_slurm() {
    SlurmInfo& s = a_.slurm;
    const std::string* job = var("SLURM_JOB_ID") ? var("SLURM_JOB_ID") : var("SLURM_JOBID");
    s.in_job = job != nullptr;
    if (job) s.job_id = *job;
    s.in_step = var("SLURM_STEP_ID") != nullptr || var("SLURM_STEPID") != nullptr;
    s.cpus_per_task = count_var("SLURM_CPUS_PER_TASK");
    s.cpus_on_node = count_var("SLURM_CPUS_ON_NODE");
    s.job_cpus_per_node = count_list_var("SLURM_JOB_CPUS_PER_NODE");
    s.ntasks = first_count_var("SLURM_NTASKS", "SLURM_NPROCS");
    s.job_num_nodes = first_count_var("SLURM_JOB_NUM_NODES", "SLURM_NNODES");
    s.node_id = count_var("SLURM_NODEID", 0);
    s.tasks_per_node = count_list_var(s.in_step && var("SLURM_STEP_TASKS_PER_NODE") ? "SLURM_STEP_TASKS_PER_NODE"
                                                                                  : "SLURM_TASKS_PER_NODE");
    const int node = s.node_id.value_or(0);
    auto on_this_node = [node](const std::vector<int>& v) -> std::optional<int> {
      if (node < static_cast<int>(v.size()) && v[static_cast<size_t>(node)] > 0) return v[static_cast<size_t>(node)];
      return std::nullopt;
    };

    // The batch script runs in the job's batch step, not in an srun task: its
    // cgroup holds every CPU the job has on this node (SLURM_CPUS_ON_NODE), and
    // SLURM_CPUS_PER_TASK sizes the tasks that srun would start.
    const bool batch_step = s.in_job && !s.in_step;
    if (batch_step && s.cpus_on_node) {
      std::string why = "SLURM_CPUS_ON_NODE=" + std::to_string(*s.cpus_on_node) + " (the batch step";
      if (s.cpus_per_task)
        why += ", not an srun task: SLURM_CPUS_PER_TASK=" + std::to_string(*s.cpus_per_task) + " sizes srun's tasks";
      add("SLURM (batch step)", why + ")", *s.cpus_on_node);
    } else if (s.cpus_per_task) {
      add("SLURM_CPUS_PER_TASK", "SLURM_CPUS_PER_TASK=" + std::to_string(*s.cpus_per_task), *s.cpus_per_task);
    } else if (s.in_job) {
      // Without --cpus-per-task SLURM says only what the node holds for the job;
      // an srun step's tasks on this node share it.
      std::optional<int> node_cpus = s.cpus_on_node;
      std::string what = node_cpus ? "SLURM_CPUS_ON_NODE=" + std::to_string(*node_cpus) : "";
      if (!node_cpus && (node_cpus = on_this_node(s.job_cpus_per_node)))
        what = "SLURM_JOB_CPUS_PER_NODE=" + *var("SLURM_JOB_CPUS_PER_NODE") + " (node " + std::to_string(node) + ")";
      if (node_cpus) {
        auto local_tasks = s.in_step ? on_this_node(s.tasks_per_node) : std::nullopt;
        slurm_per_task_ = local_tasks && *local_tasks > 1;
        if (slurm_per_task_)
          add("SLURM (per task)", what + " shared by " + std::to_string(*local_tasks) + " tasks on this node",
              *node_cpus / *local_tasks);
        else
          add("SLURM (node)", what, *node_cpus);
      }
    }

    // SLURM memory sizes are in MB (megabytes of 2^20 bytes).
    if (auto mb = count_var("SLURM_MEM_PER_NODE"))
      consider_memory(static_cast<std::uint64_t>(*mb) << 20, "SLURM_MEM_PER_NODE=" + std::to_string(*mb) + " (MB)");
    if (auto mb = count_var("SLURM_MEM_PER_CPU"); mb && s.cpus_on_node)
      consider_memory((static_cast<std::uint64_t>(*mb) << 20) * static_cast<std::uint64_t>(*s.cpus_on_node),
                      "SLURM_MEM_PER_CPU=" + std::to_string(*mb) + " (MB) x SLURM_CPUS_ON_NODE=" +
                          std::to_string(*s.cpus_on_node));

    if (s.cpus_per_task && s.cpus_on_node && *s.cpus_per_task > *s.cpus_on_node)
      a_.warnings.push_back("SLURM_CPUS_PER_TASK=" + std::to_string(*s.cpus_per_task) + " exceeds SLURM_CPUS_ON_NODE=" +
                            std::to_string(*s.cpus_on_node) + ": the job asked for more CPUs per task than a node holds");
    long long job_cpus = 0;
    for (int c : s.job_cpus_per_node) job_cpus += c;
    if (s.ntasks && s.cpus_per_task && job_cpus > 0 &&
        static_cast<long long>(*s.ntasks) * *s.cpus_per_task > job_cpus)
      a_.warnings.push_back("SLURM_NTASKS=" + std::to_string(*s.ntasks) + " x SLURM_CPUS_PER_TASK=" +
                            std::to_string(*s.cpus_per_task) + " = " +
                            std::to_string(static_cast<long long>(*s.ntasks) * *s.cpus_per_task) +
                            " CPUs, but SLURM_JOB_CPUS_PER_NODE gives the job only " + std::to_string(job_cpus) +
                            ": tasks will share CPUs");
    if (s.job_num_nodes && !s.job_cpus_per_node.empty() &&
        static_cast<size_t>(*s.job_num_nodes) != s.job_cpus_per_node.size())
      a_.warnings.push_back("SLURM_JOB_NUM_NODES=" + std::to_string(*s.job_num_nodes) +
                            " but SLURM_JOB_CPUS_PER_NODE lists " + std::to_string(s.job_cpus_per_node.size()) +
                            " nodes");
    long long listed_tasks = 0;
    for (int t : s.tasks_per_node) listed_tasks += t;
    if (s.ntasks && listed_tasks > 0 && listed_tasks != *s.ntasks)
      a_.warnings.push_back("SLURM_NTASKS=" + std::to_string(*s.ntasks) + " but the tasks-per-node list adds up to " +
                            std::to_string(listed_tasks));
  }

  // -- OpenMP
  void read_omp() {
    const std::string* v = var("OMP_NUM_THREADS");
    if (v == nullptr) return;
    if (trim(*v).empty()) {
      ignored_.push_back("OMP_NUM_THREADS is set but empty");
      return;
    }
    // "8,2" sets nested levels; the outer one is what a process starts.
    auto n = parse::integer(split(*v, ',').front());
    if (!n || *n < 1 || *n > INT_MAX) {
      ignored_.push_back("OMP_NUM_THREADS='" + *v + "' is not a positive integer (or list of them)");
      return;
    }
    a_.omp_num_threads = static_cast<int>(*n);
  }

  // -- MPI launcher
  void read_mpi() {
    MpiInfo& m = a_.mpi;
    if (var("OMPI_COMM_WORLD_SIZE") || var("OMPI_COMM_WORLD_RANK")) {
      m.launcher = "Open MPI";
      m.rank = count_var("OMPI_COMM_WORLD_RANK", 0);
      m.size = count_var("OMPI_COMM_WORLD_SIZE");
      m.local_rank = count_var("OMPI_COMM_WORLD_LOCAL_RANK", 0);
      m.local_size = count_var("OMPI_COMM_WORLD_LOCAL_SIZE");
      local_size_var_ = "OMPI_COMM_WORLD_LOCAL_SIZE";
    } else if (var("PMI_SIZE") || var("PMI_RANK")) {
      m.launcher = "MPICH/Hydra (PMI)";
      m.rank = count_var("PMI_RANK", 0);
      m.size = count_var("PMI_SIZE");
      m.local_rank = count_var("MPI_LOCALRANKID", 0);
      m.local_size = count_var("MPI_LOCALNRANKS");
      local_size_var_ = "MPI_LOCALNRANKS";
    } else if (a_.slurm.in_step && var("SLURM_PROCID")) {
      m.launcher = "SLURM srun";
      m.rank = count_var("SLURM_PROCID", 0);
      m.size = a_.slurm.ntasks;
      m.local_rank = count_var("SLURM_LOCALID", 0);
      int node = a_.slurm.node_id.value_or(0);
      if (node < static_cast<int>(a_.slurm.tasks_per_node.size()))
        m.local_size = a_.slurm.tasks_per_node[static_cast<size_t>(node)];
      local_size_var_ = "SLURM_STEP_TASKS_PER_NODE";
    } else {
      return;
    }
    if (m.rank && m.size && *m.rank >= *m.size)
      a_.warnings.push_back(m.launcher + ": rank " + std::to_string(*m.rank) + " >= size " + std::to_string(*m.size) +
                            ": the launcher's variables contradict each other");
    if (m.local_rank && m.local_size && *m.local_rank >= *m.local_size)
      a_.warnings.push_back(m.launcher + ": local rank " + std::to_string(*m.local_rank) + " >= local size " +
                            std::to_string(*m.local_size) + ": the launcher's variables contradict each other");
  }

  // -- the decision
  void decide() {
    // Ranks on one node that are not bound to disjoint CPUs share them all:
    // each one's fair share is the node's allowance divided among them. A rank
    // counts as unbound when its affinity spans the whole cpuset (or host), so a
    // launcher that binds (mpirun --bind-to core, srun --cpu-bind) is trusted.
    // SLURM's per-task numbers already are such a share.
    const int node_wide = a_.cgroup_cpuset.empty() ? a_.host_cpus : static_cast<int>(a_.cgroup_cpuset.size());
    if (a_.mpi.local_size && *a_.mpi.local_size > 1 && !a_.slurm.cpus_per_task && !slurm_per_task_ &&
        static_cast<int>(a_.affinity.size()) >= node_wide && !a_.sources.empty()) {
      int node_cpus = min_source().cpus;
      add("MPI ranks on this node",
          std::to_string(*a_.mpi.local_size) + " ranks (" + local_size_var_ + ") share " + std::to_string(node_cpus) +
              " CPUs, not bound to separate cores",
          node_cpus / *a_.mpi.local_size);
    }
    if (a_.sources.empty()) {
      a_.cpus = std::max(1, a_.host_cpus);
      a_.cpus_source = "host CPU count (nothing else could be read)";
    } else {
      const AllocationSource& best = min_source();
      a_.cpus = best.cpus;
      a_.cpus_source = best.detail;
    }
    const std::string using_text =
        "using " + std::to_string(a_.cpus) + " CPU" + (a_.cpus == 1 ? "" : "s") + " from " + a_.cpus_source;
    for (auto& w : ignored_) a_.warnings.push_back(w + "; ignored, " + using_text);

    for (const auto& s : a_.sources)
      if (s.name.rfind("SLURM", 0) == 0 && s.cpus > a_.cpus)
        a_.warnings.push_back("SLURM granted " + std::to_string(s.cpus) + " CPUs (" + s.detail +
                              ") but this process may use only " + std::to_string(a_.cpus) + " (" + a_.cpus_source +
                              "); " + std::to_string(s.cpus - a_.cpus) + " of them sit idle");
    if (a_.omp_num_threads && *a_.omp_num_threads > a_.cpus)
      a_.warnings.push_back("OMP_NUM_THREADS=" + std::to_string(*a_.omp_num_threads) + " but this process may use " +
                            std::to_string(a_.cpus) + " CPU" + (a_.cpus == 1 ? "" : "s") + " (" + a_.cpus_source +
                            "): each OpenMP region runs " + std::to_string(*a_.omp_num_threads) + " threads on " +
                            std::to_string(a_.cpus) + " CPU" + (a_.cpus == 1 ? "" : "s") +
                            "; set OMP_NUM_THREADS=" + std::to_string(a_.cpus));
    if (a_.mpi.local_size && *a_.mpi.local_size > 1) {
      int threads = a_.omp_num_threads.value_or(a_.cpus);
      long long total = static_cast<long long>(*a_.mpi.local_size) * threads;
      if (total > node_wide)
        a_.warnings.push_back(std::to_string(*a_.mpi.local_size) + " MPI ranks on this node x " +
                              std::to_string(threads) + (threads == 1 ? " thread each" : " threads each") +
                              (a_.omp_num_threads ? " (OMP_NUM_THREADS)" : "") + " = " + std::to_string(total) +
                              " threads, more than the node's " + std::to_string(node_wide) + " CPUs" +
                              (a_.cgroup_cpuset.empty() ? "" : " (cgroup cpuset)"));
    }
    if (a_.slurm.in_job && !a_.slurm.in_step && a_.mpi.launcher.empty() && a_.slurm.ntasks && *a_.slurm.ntasks > 1) {
      // A pool is one task with many CPUs: say how to ask SLURM for that.
      const SlurmInfo& s = a_.slurm;
      const long long asked = s.cpus_per_task ? static_cast<long long>(*s.ntasks) * *s.cpus_per_task : *s.ntasks;
      a_.warnings.push_back("SLURM_NTASKS=" + std::to_string(*s.ntasks) +
                            " but this process was not started by srun or an MPI launcher: it is one process in the batch "
                            "step, and what the other " +
                            (*s.ntasks == 2 ? std::string("task") : std::to_string(*s.ntasks - 1) + " tasks") +
                            " got on other nodes stays idle unless this script launches them (srun, mpirun); "
                            "for one shoal.Pool, submit with --ntasks=1 --cpus-per-task=N instead (N=" +
                            std::to_string(asked) + " asks for as many CPUs, on one node)");
    }
  }

  // Smallest limit. Sources are added from the most general (affinity) to the
  // most specific (SLURM, MPI), and on a tie the most specific one names the source.
  const AllocationSource& min_source() const {
    const AllocationSource* best = &a_.sources.front();
    for (const auto& s : a_.sources)
      if (s.cpus <= best->cpus) best = &s;
    return *best;
  }

  const Environment& env_;
  std::string root_;
  bool real_affinity_;
  bool slurm_per_task_ = false;  // the SLURM candidate is already one task's share of the node
  Allocation a_;
  std::vector<std::string> ignored_;
  std::string quota_name_, quota_detail_, local_size_var_;
};

}  // namespace

Allocation Allocation::detect() { return Detector(current_environment(), "/", true).run(); }

Allocation Allocation::detect(const Environment& env, const std::string& sys_root) {
  return Detector(env, sys_root, false).run();
}

int default_concurrency() {
  // Function-local static: initialised once, thread-safe by the language.
  static const int cpus = Allocation::detect().cpus;
  return cpus;
}

}  // namespace shoal
