// libFuzzer target: the SLURM, cgroup and CPU-list parsers, and Allocation::detect
// over an environment built from the input. Every input must give a count >= 1,
// and no parser may crash, hang or allocate without bound.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "shoal/allocation.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);

  (void)shoal::parse::integer(in);
  if (auto l = shoal::parse::cpu_list(in)) {
    for (size_t i = 1; i < l->size(); ++i)
      if ((*l)[i - 1] >= (*l)[i]) std::abort();  // sorted, unique
  }
  if (auto l = shoal::parse::slurm_count_list(in)) {
    if (l->empty()) std::abort();
    for (int c : *l)
      if (c < 0) std::abort();
  }
  auto q = shoal::parse::cgroup_v2_cpu_max(in);
  if (q.cpus && !(*q.cpus > 0)) std::abort();
  auto nl = in.find('\n');
  auto q1 = shoal::parse::cgroup_v1_cfs(in.substr(0, nl), nl == std::string_view::npos ? "" : in.substr(nl + 1));
  if (q1.cpus && !(*q1.cpus > 0)) std::abort();

  // Lines of the input become the values of the variables detect() reads.
  static const char* const names[] = {
      "SLURM_JOB_ID",          "SLURM_CPUS_PER_TASK",   "SLURM_CPUS_ON_NODE", "SLURM_JOB_CPUS_PER_NODE",
      "SLURM_NTASKS",          "SLURM_JOB_NUM_NODES",   "SLURM_NODEID",       "SLURM_STEP_ID",
      "SLURM_STEP_TASKS_PER_NODE", "SLURM_PROCID",      "SLURM_LOCALID",      "OMP_NUM_THREADS",
      "OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"};
  shoal::Environment env;
  size_t start = 0;
  for (const char* name : names) {
    if (start > in.size()) break;
    auto end = in.find('\n', start);
    env[name] = std::string(in.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
    start = end == std::string_view::npos ? in.size() + 1 : end + 1;
  }
  auto a = shoal::Allocation::detect(env, "/nonexistent-shoal-fuzz-root");
  if (a.cpus < 1 || a.cpus_source.empty()) std::abort();
  return 0;
}
