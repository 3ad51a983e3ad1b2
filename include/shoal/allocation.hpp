// shoal/allocation.hpp — how many CPUs this process may really use, and why.
//
// Every limit the OS, the batch system and the MPI launcher put on a process
// is read, each becomes one candidate, and the smallest wins:
//
//   sched_getaffinity ──────────────┐
//   cgroup cpuset (v1/v2) ──────────┤
//   cgroup quota  (cpu.max, cfs) ───┼──► min ──► Allocation::cpus (+ cpus_source)
//   SLURM_CPUS_PER_TASK / ON_NODE ──┤
//   MPI ranks sharing this node ────┘
//   OMP_NUM_THREADS, SLURM task layout ─────► warnings (oversubscription, waste)
//   cgroup memory.max | limit_in_bytes, SLURM_MEM_* ──► memory_limit_bytes
//
// Every parser is total: malformed input never throws, it adds a warning that
// names the variable (or file) and the fallback that was used instead.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shoal {

// A process environment as name -> value; detect() takes the real one, tests a made-up one.
using Environment = std::map<std::string, std::string>;

// Snapshot of the calling process's environ.
Environment current_environment();

// One limit that was considered, e.g. {"cgroup v2", "/sys/fs/cgroup/cpu.max = 200000 100000"}.
struct AllocationSource {
  std::string name;    // short: "CPU affinity", "cgroup v2 quota", "SLURM_CPUS_PER_TASK", ...
  std::string detail;  // where exactly it came from, readable
  int cpus = 0;        // the CPU count this limit alone allows
};

// The SLURM job as its environment describes it; every field is empty when absent or malformed.
struct SlurmInfo {
  bool in_job = false;                  // SLURM_JOB_ID is set
  bool in_step = false;                 // launched by srun (SLURM_STEP_ID or SLURM_PROCID set)
  std::string job_id;                   // SLURM_JOB_ID
  std::optional<int> cpus_per_task;     // SLURM_CPUS_PER_TASK
  std::optional<int> cpus_on_node;      // SLURM_CPUS_ON_NODE
  std::vector<int> job_cpus_per_node;   // SLURM_JOB_CPUS_PER_NODE, "2(x3),1" -> {2,2,2,1}
  std::optional<int> ntasks;            // SLURM_NTASKS (or SLURM_NPROCS)
  std::optional<int> job_num_nodes;     // SLURM_JOB_NUM_NODES (or SLURM_NNODES)
  std::optional<int> node_id;           // SLURM_NODEID
  std::vector<int> tasks_per_node;      // SLURM_STEP_TASKS_PER_NODE or SLURM_TASKS_PER_NODE, expanded
};

// Where this process sits among the MPI ranks its launcher started.
struct MpiInfo {
  std::string launcher;                 // "Open MPI", "MPICH/Hydra (PMI)", "SLURM srun", or "" if none
  std::optional<int> rank, size, local_rank, local_size;
};

struct Allocation {
  int cpus = 1;                         // what this process may really use (>= 1)
  std::string cpus_source;              // the limit that decided it, e.g. "SLURM_CPUS_PER_TASK=4"
  std::vector<AllocationSource> sources;  // every limit considered, in the order read

  std::vector<int> affinity;            // CPU ids in sched_getaffinity
  int host_cpus = 0;                    // CPUs online on the host (/sys/devices/system/cpu/online)

  std::string cgroup_version = "none";  // "v1", "v2" or "none"
  std::string cgroup_path;              // this process's cgroup (cpu controller), e.g. "/user.slice"
  std::optional<double> cgroup_quota_cpus;  // quota / period, unset when unlimited or unknown
  std::vector<int> cgroup_cpuset;       // cpuset.cpus.effective, empty when unknown

  // Memory this process may use: the smallest of the cgroup memory limits (memory.max,
  // memory.limit_in_bytes, up the hierarchy), SLURM_MEM_PER_NODE and SLURM_MEM_PER_CPU x CPUs on the node.
  std::optional<std::uint64_t> memory_limit_bytes;  // unset: no limit found
  std::string memory_limit_source;

  SlurmInfo slurm;
  std::optional<int> omp_num_threads;   // first level of OMP_NUM_THREADS ("8,2" -> 8)
  MpiInfo mpi;

  std::vector<std::string> warnings;    // malformed or contradictory inputs; oversubscription

  // From the running process: real environ, real /proc and /sys, sched_getaffinity.
  static Allocation detect();
  // For tests and tools: env instead of environ, and /proc, /sys read under sys_root
  // (proc/self/cgroup, proc/self/status for the affinity, sys/fs/cgroup/..., sys/devices/system/cpu/online).
  // When sys_root has no proc/self/status the real sched_getaffinity is used.
  static Allocation detect(const Environment& env, const std::string& sys_root);
};

// Allocation::detect().cpus, computed once per process. The thread pool sizes itself with this.
int default_concurrency();

// The parsers behind detect(), public so tests and fuzzers reach them directly. All are total.
namespace parse {
// Whole string (surrounding blanks allowed) as a base-10 int; nullopt on anything else or overflow.
std::optional<long long> integer(std::string_view s);
// Linux CPU list "0-3,8,10-11" -> {0,1,2,3,8,10,11}; "" -> {}; nullopt when malformed.
std::optional<std::vector<int>> cpu_list(std::string_view s);
// SLURM's compressed count list "2(x3),1" -> {2,2,2,1}; nullopt when malformed.
std::optional<std::vector<int>> slurm_count_list(std::string_view s);
// cgroup v2 cpu.max "200000 100000" -> 2.0; "max 100000" -> unlimited.
struct Quota {
  bool valid = false;            // false: malformed, ignore the file
  std::optional<double> cpus;    // empty when unlimited
};
Quota cgroup_v2_cpu_max(std::string_view s);
// cgroup v1 cpu.cfs_quota_us / cpu.cfs_period_us contents; quota -1 = unlimited.
Quota cgroup_v1_cfs(std::string_view quota, std::string_view period);
}  // namespace parse

}  // namespace shoal
