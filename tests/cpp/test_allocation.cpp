// Allocation: every branch driven from fixture trees (tests/cpp/fixtures/<case>/{proc,sys})
// and made-up environments, plus the real process.
#include <gtest/gtest.h>
#include <sched.h>

#include <algorithm>
#include <string>

#include "shoal/allocation.hpp"

using shoal::Allocation;
using shoal::Environment;

namespace {

std::string fixture(const std::string& name) { return std::string(SHOAL_FIXTURES) + "/" + name; }

Allocation detect(const std::string& tree, const Environment& env = {}) {
  return Allocation::detect(env, fixture(tree));
}

// True when some warning contains every one of the given fragments.
bool warned(const Allocation& a, std::initializer_list<std::string> parts) {
  return std::any_of(a.warnings.begin(), a.warnings.end(), [&](const std::string& w) {
    return std::all_of(parts.begin(), parts.end(), [&](const std::string& p) { return w.find(p) != std::string::npos; });
  });
}

std::string all_warnings(const Allocation& a) {
  std::string s;
  for (const auto& w : a.warnings) s += "\n  " + w;
  return s;
}

}  // namespace

// ------------------------------------------------------------------ parsers

TEST(AllocationParse, Integer) {
  EXPECT_EQ(shoal::parse::integer("42"), 42);
  EXPECT_EQ(shoal::parse::integer(" 7\n"), 7);
  EXPECT_EQ(shoal::parse::integer("-3"), -3);
  EXPECT_EQ(shoal::parse::integer("+5"), 5);
  EXPECT_FALSE(shoal::parse::integer(""));
  EXPECT_FALSE(shoal::parse::integer("abc"));
  EXPECT_FALSE(shoal::parse::integer("4x"));
  EXPECT_FALSE(shoal::parse::integer("99999999999999999999999"));
}

TEST(AllocationParse, CpuList) {
  EXPECT_EQ(shoal::parse::cpu_list("0-3,8,10-11\n"), (std::vector<int>{0, 1, 2, 3, 8, 10, 11}));
  EXPECT_EQ(shoal::parse::cpu_list("5,1,1"), (std::vector<int>{1, 5}));
  EXPECT_EQ(shoal::parse::cpu_list(""), std::vector<int>{});
  for (const char* bad : {"0-", "-1", "3-1", "a", "1,,2", "0-99999999"}) EXPECT_FALSE(shoal::parse::cpu_list(bad)) << bad;
}

TEST(AllocationParse, SlurmCountList) {
  EXPECT_EQ(shoal::parse::slurm_count_list("2(x3),1"), (std::vector<int>{2, 2, 2, 1}));
  EXPECT_EQ(shoal::parse::slurm_count_list("16"), (std::vector<int>{16}));
  EXPECT_EQ(shoal::parse::slurm_count_list("4,8(x2)"), (std::vector<int>{4, 8, 8}));
  for (const char* bad : {"2(x", "x3", "", "2(x0)", "2(y3)", "2(x3", ",", "-1", "2(x3)1", "1(x99999999)"})
    EXPECT_FALSE(shoal::parse::slurm_count_list(bad)) << bad;
}

TEST(AllocationParse, CgroupQuota) {
  auto q = shoal::parse::cgroup_v2_cpu_max("200000 100000\n");
  EXPECT_TRUE(q.valid);
  EXPECT_DOUBLE_EQ(q.cpus.value(), 2.0);
  q = shoal::parse::cgroup_v2_cpu_max("max 100000");
  EXPECT_TRUE(q.valid);
  EXPECT_FALSE(q.cpus);
  for (const char* bad : {"", "lots 100000", "100000 0", "1 2 3", "-5 100000", "max"})
    EXPECT_EQ(shoal::parse::cgroup_v2_cpu_max(bad).valid, std::string(bad) == "max") << bad;
  auto v1 = shoal::parse::cgroup_v1_cfs("50000", "100000");
  EXPECT_DOUBLE_EQ(v1.cpus.value(), 0.5);
  EXPECT_TRUE(shoal::parse::cgroup_v1_cfs("-1", "100000").valid);
  EXPECT_FALSE(shoal::parse::cgroup_v1_cfs("-1", "100000").cpus);
  EXPECT_FALSE(shoal::parse::cgroup_v1_cfs("abc", "100000").valid);
  EXPECT_FALSE(shoal::parse::cgroup_v1_cfs("100", "0").valid);
}

// ------------------------------------------------------------------ cgroups

TEST(AllocationCgroup, AffinityOnly) {
  auto a = detect("no_cgroup");
  EXPECT_EQ(a.cpus, 8);
  EXPECT_EQ(a.host_cpus, 8);
  EXPECT_EQ(a.affinity.size(), 8u);
  EXPECT_EQ(a.cgroup_version, "none");
  EXPECT_NE(a.cpus_source.find("Cpus_allowed_list"), std::string::npos) << a.cpus_source;
  EXPECT_TRUE(a.warnings.empty()) << all_warnings(a);
}

TEST(AllocationCgroup, V2QuotaRoundsUp) {
  auto a = detect("v2_quota");
  EXPECT_EQ(a.cgroup_version, "v2");
  EXPECT_EQ(a.cgroup_path, "/job.slice/step");
  EXPECT_DOUBLE_EQ(a.cgroup_quota_cpus.value(), 1.5);
  EXPECT_EQ(a.cpus, 2);
  EXPECT_NE(a.cpus_source.find("/sys/fs/cgroup/job.slice/step/cpu.max = 150000 100000"), std::string::npos)
      << a.cpus_source;
  EXPECT_EQ(a.cgroup_cpuset.size(), 8u);
  EXPECT_TRUE(a.warnings.empty()) << all_warnings(a);
}

TEST(AllocationCgroup, V2ParentQuotaBinds) {
  auto a = detect("v2_nested");
  EXPECT_EQ(a.cpus, 3);
  EXPECT_NE(a.cpus_source.find("/sys/fs/cgroup/parent/cpu.max"), std::string::npos) << a.cpus_source;
}

TEST(AllocationCgroup, V2MaxIsUnlimited) {
  auto a = detect("v2_max");
  EXPECT_EQ(a.cpus, 8);
  EXPECT_FALSE(a.cgroup_quota_cpus);
  EXPECT_TRUE(a.warnings.empty()) << all_warnings(a);
}

TEST(AllocationCgroup, V2GarbageWarnsAndFallsBack) {
  auto a = detect("v2_garbage");
  EXPECT_EQ(a.cpus, 8);
  EXPECT_TRUE(warned(a, {"/sys/fs/cgroup/u/cpu.max", "malformed", "lots 100000", "ignored"})) << all_warnings(a);
}

TEST(AllocationCgroup, V2UnreadableWarnsAndFallsBack) {
  auto a = detect("v2_unreadable");
  EXPECT_EQ(a.cpus, 8);
  EXPECT_TRUE(warned(a, {"cannot read /sys/fs/cgroup/u/cpu.max", "directory"})) << all_warnings(a);
}

TEST(AllocationCgroup, V2ContainerPathFallsBackToMountRoot) {
  auto a = detect("v2_container");
  EXPECT_EQ(a.cpus, 2);
  EXPECT_EQ(a.cgroup_cpuset, (std::vector<int>{0, 1, 2, 3, 4, 5}));
}

TEST(AllocationCgroup, V2Cpuset) {
  auto a = detect("v2_cpuset");
  EXPECT_EQ(a.cpus, 3);
  EXPECT_NE(a.cpus_source.find("cpuset.cpus.effective = 2-4"), std::string::npos) << a.cpus_source;
}

TEST(AllocationCgroup, V1QuotaAndCpuset) {
  auto a = detect("v1_quota");
  EXPECT_EQ(a.cgroup_version, "v1");
  EXPECT_EQ(a.cgroup_path, "/job");
  EXPECT_EQ(a.cpus, 4);
  EXPECT_NE(a.cpus_source.find("cpu.cfs_quota_us = 400000"), std::string::npos) << a.cpus_source;
  EXPECT_EQ(a.cgroup_cpuset.size(), 6u);
}

TEST(AllocationCgroup, V1UnlimitedCombinedMount) {
  auto a = detect("v1_unlimited");
  EXPECT_EQ(a.cgroup_version, "v1");
  EXPECT_FALSE(a.cgroup_quota_cpus);
  EXPECT_EQ(a.cpus, 6);
  EXPECT_NE(a.cpus_source.find("cpuset"), std::string::npos) << a.cpus_source;
}

TEST(AllocationCgroup, V1GarbageWarnsAndFallsBack) {
  auto a = detect("v1_garbage");
  EXPECT_EQ(a.cpus, 8);
  EXPECT_TRUE(warned(a, {"cpu.cfs_quota_us", "malformed", "abc"})) << all_warnings(a);
  EXPECT_TRUE(warned(a, {"cpuset.cpus", "malformed", "0-"})) << all_warnings(a);
}

TEST(AllocationCgroup, MissingRootFallsBackToRealProcess) {
  auto a = Allocation::detect({}, fixture("does-not-exist"));
  EXPECT_GE(a.cpus, 1);
  EXPECT_EQ(a.cgroup_version, "none");
  EXPECT_FALSE(a.affinity.empty());
}

// ------------------------------------------------------------------ SLURM

TEST(AllocationSlurm, CpusPerTaskDecides) {
  auto a = detect("no_cgroup", {{"SLURM_JOB_ID", "123"}, {"SLURM_CPUS_PER_TASK", "4"}});
  EXPECT_EQ(a.cpus, 4);
  EXPECT_EQ(a.cpus_source, "SLURM_CPUS_PER_TASK=4");
  EXPECT_EQ(a.slurm.job_id, "123");
  EXPECT_TRUE(a.warnings.empty()) << all_warnings(a);
}

TEST(AllocationSlurm, CpusPerTaskWithoutJobIdStillCounts) {
  auto a = detect("no_cgroup", {{"SLURM_CPUS_PER_TASK", "1"}});
  EXPECT_EQ(a.cpus, 1);
  EXPECT_EQ(a.cpus_source, "SLURM_CPUS_PER_TASK=1");
}

TEST(AllocationSlurm, TieNamesSlurm) {
  auto a = detect("no_cgroup", {{"SLURM_CPUS_PER_TASK", "8"}});
  EXPECT_EQ(a.cpus, 8);
  EXPECT_EQ(a.cpus_source, "SLURM_CPUS_PER_TASK=8");
}

TEST(AllocationSlurm, BadCpusPerTaskWarnsAndFallsBack) {
  for (const char* bad : {"abc", "0", "-3", "", "4.5"}) {
    auto a = detect("no_cgroup", {{"SLURM_JOB_ID", "1"}, {"SLURM_CPUS_PER_TASK", bad}});
    EXPECT_EQ(a.cpus, 8) << bad;
    EXPECT_FALSE(a.slurm.cpus_per_task) << bad;
    EXPECT_TRUE(warned(a, {std::string("SLURM_CPUS_PER_TASK='") + bad + "'", "ignored", "using 8 CPUs from"}))
        << bad << all_warnings(a);
  }
}

TEST(AllocationSlurm, MoreThanAffinityWarns) {
  auto a = detect("no_cgroup", {{"SLURM_CPUS_PER_TASK", "16"}});
  EXPECT_EQ(a.cpus, 8);
  EXPECT_TRUE(warned(a, {"SLURM granted 16", "only 8", "8 of them sit idle"})) << all_warnings(a);
}

TEST(AllocationSlurm, JobCpusPerNodeExpanded) {
  auto a = detect("no_cgroup", {{"SLURM_JOB_ID", "9"},
                                {"SLURM_JOB_CPUS_PER_NODE", "2(x3),1"},
                                {"SLURM_JOB_NUM_NODES", "4"},
                                {"SLURM_NODEID", "3"}});
  EXPECT_EQ(a.slurm.job_cpus_per_node, (std::vector<int>{2, 2, 2, 1}));
  EXPECT_EQ(a.cpus, 1);  // node 3 holds 1 CPU of the job
  EXPECT_NE(a.cpus_source.find("SLURM_JOB_CPUS_PER_NODE=2(x3),1 (node 3)"), std::string::npos) << a.cpus_source;
  EXPECT_TRUE(a.warnings.empty()) << all_warnings(a);
}

TEST(AllocationSlurm, BadJobCpusPerNodeWarns) {
  for (const char* bad : {"2(x", "x3", ""}) {
    auto a = detect("no_cgroup", {{"SLURM_JOB_ID", "9"}, {"SLURM_JOB_CPUS_PER_NODE", bad}});
    EXPECT_EQ(a.cpus, 8) << bad;
    EXPECT_TRUE(a.slurm.job_cpus_per_node.empty());
    EXPECT_TRUE(warned(a, {std::string("SLURM_JOB_CPUS_PER_NODE='") + bad + "'", "ignored, using 8"}))
        << bad << all_warnings(a);
  }
}

TEST(AllocationSlurm, CpusOnNodeWithoutCpusPerTask) {
  auto a = detect("no_cgroup", {{"SLURM_JOB_ID", "9"}, {"SLURM_CPUS_ON_NODE", "6"}});
  EXPECT_EQ(a.cpus, 6);
  EXPECT_EQ(a.cpus_source, "SLURM_CPUS_ON_NODE=6 (the batch step)");
}

// sbatch --ntasks=4 --cpus-per-task=1: the batch script may use the job's 4 CPUs
// on this node; SLURM_CPUS_PER_TASK=1 is the size of the tasks srun would start.
TEST(AllocationSlurm, BatchStepFollowsCpusOnNodeNotCpusPerTask) {
  auto a = detect("no_cgroup", {{"SLURM_JOB_ID", "9"}, {"SLURM_CPUS_PER_TASK", "1"}, {"SLURM_CPUS_ON_NODE", "4"},
                                {"SLURM_NTASKS", "4"}});
  EXPECT_EQ(a.cpus, 4);
  EXPECT_EQ(a.cpus_source,
            "SLURM_CPUS_ON_NODE=4 (the batch step, not an srun task: SLURM_CPUS_PER_TASK=1 sizes srun's tasks)");
  EXPECT_TRUE(warned(a, {"not started by srun", "--ntasks=1 --cpus-per-task=N", "N=4"})) << all_warnings(a);
  // The same variables in an srun step: one task, one CPU.
  auto step = detect("no_cgroup", {{"SLURM_JOB_ID", "9"}, {"SLURM_STEP_ID", "0"}, {"SLURM_CPUS_PER_TASK", "1"},
                                   {"SLURM_CPUS_ON_NODE", "4"}, {"SLURM_NTASKS", "4"}});
  EXPECT_EQ(step.cpus, 1);
  EXPECT_EQ(step.cpus_source, "SLURM_CPUS_PER_TASK=1");
}

TEST(AllocationSlurm, SrunStepSharesNodeAmongLocalTasks) {
  auto a = detect("no_cgroup", {{"SLURM_JOB_ID", "9"},
                                {"SLURM_STEP_ID", "0"},
                                {"SLURM_CPUS_ON_NODE", "8"},
                                {"SLURM_NTASKS", "4"},
                                {"SLURM_STEP_TASKS_PER_NODE", "4"},
                                {"SLURM_PROCID", "1"},
                                {"SLURM_LOCALID", "1"}});
  EXPECT_EQ(a.cpus, 2);
  EXPECT_EQ(a.mpi.launcher, "SLURM srun");
  EXPECT_EQ(a.mpi.rank, 1);
  EXPECT_EQ(a.mpi.size, 4);
  EXPECT_EQ(a.mpi.local_size, 4);
  EXPECT_TRUE(a.warnings.empty()) << all_warnings(a);
}

TEST(AllocationSlurm, TaskCountMismatchesWarn) {
  auto a = detect("no_cgroup", {{"SLURM_JOB_ID", "9"},
                                {"SLURM_NTASKS", "8"},
                                {"SLURM_CPUS_PER_TASK", "4"},
                                {"SLURM_JOB_CPUS_PER_NODE", "8(x2)"},
                                {"SLURM_JOB_NUM_NODES", "3"},
                                {"SLURM_TASKS_PER_NODE", "2(x2)"}});
  EXPECT_TRUE(warned(a, {"SLURM_NTASKS=8 x SLURM_CPUS_PER_TASK=4 = 32", "only 16"})) << all_warnings(a);
  EXPECT_TRUE(warned(a, {"SLURM_JOB_NUM_NODES=3", "lists 2 nodes"})) << all_warnings(a);
  EXPECT_TRUE(warned(a, {"SLURM_NTASKS=8", "adds up to 4"})) << all_warnings(a);
  EXPECT_TRUE(warned(a, {"not started by srun", "other 7 tasks"})) << all_warnings(a);
}

TEST(AllocationSlurm, CpusPerTaskAboveCpusOnNodeWarns) {
  auto a = detect("no_cgroup", {{"SLURM_JOB_ID", "9"}, {"SLURM_CPUS_PER_TASK", "4"}, {"SLURM_CPUS_ON_NODE", "2"}});
  EXPECT_TRUE(warned(a, {"SLURM_CPUS_PER_TASK=4 exceeds SLURM_CPUS_ON_NODE=2"})) << all_warnings(a);
}

// ------------------------------------------------------------------ OpenMP

TEST(AllocationOmp, Parsed) {
  EXPECT_EQ(detect("no_cgroup", {{"OMP_NUM_THREADS", "4"}}).omp_num_threads, 4);
  EXPECT_EQ(detect("no_cgroup", {{"OMP_NUM_THREADS", "8,2"}}).omp_num_threads, 8);
  EXPECT_TRUE(detect("no_cgroup", {{"OMP_NUM_THREADS", "4"}}).warnings.empty());
}

TEST(AllocationOmp, EmptyOrGarbageWarns) {
  auto a = detect("no_cgroup", {{"OMP_NUM_THREADS", ""}});
  EXPECT_FALSE(a.omp_num_threads);
  EXPECT_TRUE(warned(a, {"OMP_NUM_THREADS is set but empty", "ignored, using 8 CPUs"})) << all_warnings(a);
  for (const char* bad : {"abc", "0", "-2", ",4"}) {
    auto b = detect("no_cgroup", {{"OMP_NUM_THREADS", bad}});
    EXPECT_FALSE(b.omp_num_threads) << bad;
    EXPECT_TRUE(warned(b, {std::string("OMP_NUM_THREADS='") + bad + "'", "ignored"})) << bad << all_warnings(b);
  }
}

TEST(AllocationOmp, MoreThreadsThanSlurmCpusWarns) {
  auto a = detect("no_cgroup", {{"SLURM_JOB_ID", "1"}, {"SLURM_CPUS_PER_TASK", "4"}, {"OMP_NUM_THREADS", "16"}});
  EXPECT_EQ(a.cpus, 4);
  EXPECT_TRUE(warned(a, {"OMP_NUM_THREADS=16", "may use 4 CPUs (SLURM_CPUS_PER_TASK=4)", "set OMP_NUM_THREADS=4"}))
      << all_warnings(a);
}

// ------------------------------------------------------------------ MPI launchers

TEST(AllocationMpi, OpenMpiUnboundRanksShareTheNode) {
  auto a = detect("no_cgroup", {{"OMPI_COMM_WORLD_RANK", "3"},
                                {"OMPI_COMM_WORLD_SIZE", "8"},
                                {"OMPI_COMM_WORLD_LOCAL_RANK", "3"},
                                {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"}});
  EXPECT_EQ(a.mpi.launcher, "Open MPI");
  EXPECT_EQ(a.mpi.rank, 3);
  EXPECT_EQ(a.mpi.size, 8);
  EXPECT_EQ(a.mpi.local_rank, 3);
  EXPECT_EQ(a.mpi.local_size, 4);
  EXPECT_EQ(a.cpus, 2);
  EXPECT_NE(a.cpus_source.find("4 ranks (OMPI_COMM_WORLD_LOCAL_SIZE) share 8 CPUs"), std::string::npos)
      << a.cpus_source;
  EXPECT_TRUE(a.warnings.empty()) << all_warnings(a);
}

TEST(AllocationMpi, RanksTimesThreadsAboveCoresWarns) {
  auto a = detect("no_cgroup", {{"OMPI_COMM_WORLD_RANK", "0"},
                                {"OMPI_COMM_WORLD_SIZE", "4"},
                                {"OMPI_COMM_WORLD_LOCAL_RANK", "0"},
                                {"OMPI_COMM_WORLD_LOCAL_SIZE", "4"},
                                {"OMP_NUM_THREADS", "4"}});
  EXPECT_TRUE(warned(a, {"4 MPI ranks on this node x 4 threads each (OMP_NUM_THREADS) = 16", "node's 8 CPUs"}))
      << all_warnings(a);
}

TEST(AllocationMpi, MpichPmi) {
  auto a = detect("no_cgroup", {{"PMI_RANK", "1"}, {"PMI_SIZE", "2"}, {"MPI_LOCALRANKID", "1"}, {"MPI_LOCALNRANKS", "2"}});
  EXPECT_EQ(a.mpi.launcher, "MPICH/Hydra (PMI)");
  EXPECT_EQ(a.mpi.rank, 1);
  EXPECT_EQ(a.mpi.size, 2);
  EXPECT_EQ(a.cpus, 4);
}

TEST(AllocationMpi, ContradictionsAndGarbageWarn) {
  auto a = detect("no_cgroup", {{"PMI_RANK", "5"}, {"PMI_SIZE", "2"}, {"MPI_LOCALNRANKS", "lots"}});
  EXPECT_TRUE(warned(a, {"rank 5 >= size 2"})) << all_warnings(a);
  EXPECT_TRUE(warned(a, {"MPI_LOCALNRANKS='lots'", "ignored"})) << all_warnings(a);
  EXPECT_EQ(a.cpus, 8);
}

// ------------------------------------------------------------------ the real process

TEST(AllocationReal, WithinAffinity) {
  auto a = Allocation::detect();
  cpu_set_t set;
  ASSERT_EQ(sched_getaffinity(0, sizeof set, &set), 0);
  EXPECT_GE(a.cpus, 1);
  EXPECT_LE(a.cpus, CPU_COUNT(&set));
  EXPECT_EQ(static_cast<int>(a.affinity.size()), CPU_COUNT(&set));
  EXPECT_GE(a.host_cpus, a.cpus);
  EXPECT_FALSE(a.cpus_source.empty());
  EXPECT_EQ(shoal::default_concurrency(), a.cpus);
}

TEST(AllocationReal, NarrowedAffinityIsSeen) {
  cpu_set_t old_set, one;
  ASSERT_EQ(sched_getaffinity(0, sizeof old_set, &old_set), 0);
  int first = 0;
  while (!CPU_ISSET(first, &old_set)) ++first;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  ASSERT_EQ(sched_setaffinity(0, sizeof one, &one), 0);
  auto a = Allocation::detect();
  ASSERT_EQ(sched_setaffinity(0, sizeof old_set, &old_set), 0);
  EXPECT_EQ(a.cpus, 1);
  EXPECT_EQ(a.affinity, std::vector<int>{first});
}

TEST(AllocationReal, CurrentEnvironmentSeesVariables) {
  setenv("SHOAL_TEST_VARIABLE", "a=b", 1);
  auto env = shoal::current_environment();
  unsetenv("SHOAL_TEST_VARIABLE");
  EXPECT_EQ(env.at("SHOAL_TEST_VARIABLE"), "a=b");
}

// ------------------------------------------------------------------ memory

TEST(AllocationMemory, V2ParentLimitBinds) {
  auto a = detect("v2_quota");
  EXPECT_EQ(a.memory_limit_bytes, 4294967296ull);
  EXPECT_EQ(a.memory_limit_source, "/sys/fs/cgroup/job.slice/memory.max = 4294967296");
}

TEST(AllocationMemory, V1LimitAndUnlimitedRoot) {
  auto a = detect("v1_quota");
  EXPECT_EQ(a.memory_limit_bytes, 2147483648ull);
  EXPECT_NE(a.memory_limit_source.find("/sys/fs/cgroup/memory/job/memory.limit_in_bytes"), std::string::npos);
}

TEST(AllocationMemory, NoneFoundAndGarbageWarns) {
  EXPECT_FALSE(detect("no_cgroup").memory_limit_bytes);
  EXPECT_FALSE(detect("v2_max").memory_limit_bytes);
  auto a = detect("v2_garbage");
  EXPECT_FALSE(a.memory_limit_bytes);
  EXPECT_TRUE(warned(a, {"/sys/fs/cgroup/u/memory.max is malformed ('lots')"})) << all_warnings(a);
}

TEST(AllocationMemory, SlurmMemorySmallerThanCgroupWins) {
  auto a = detect("v2_quota", {{"SLURM_JOB_ID", "1"}, {"SLURM_MEM_PER_NODE", "1024"}});
  EXPECT_EQ(a.memory_limit_bytes, 1024ull << 20);
  EXPECT_EQ(a.memory_limit_source, "SLURM_MEM_PER_NODE=1024 (MB)");
  auto b = detect("no_cgroup", {{"SLURM_JOB_ID", "1"}, {"SLURM_MEM_PER_CPU", "2000"}, {"SLURM_CPUS_ON_NODE", "4"}});
  EXPECT_EQ(b.memory_limit_bytes, 8000ull << 20);
  auto c = detect("no_cgroup", {{"SLURM_MEM_PER_NODE", "lots"}});
  EXPECT_FALSE(c.memory_limit_bytes);
  EXPECT_TRUE(warned(c, {"SLURM_MEM_PER_NODE='lots'", "ignored"})) << all_warnings(c);
}

TEST(AllocationMpi, UnboundRanksInsideAJobCpusetShareIt) {
  Environment ompi{{"OMPI_COMM_WORLD_RANK", "0"}, {"OMPI_COMM_WORLD_SIZE", "2"},
                   {"OMPI_COMM_WORLD_LOCAL_RANK", "0"}, {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"}};
  auto a = detect("v2_job_cpuset", ompi);
  EXPECT_EQ(a.cgroup_cpuset, (std::vector<int>{4, 5, 6, 7}));
  EXPECT_EQ(a.cpus, 2);  // 4 job CPUs shared by 2 unbound ranks
  EXPECT_TRUE(a.warnings.empty()) << all_warnings(a);
}

TEST(AllocationMpi, BoundRanksAreTrusted) {
  // The launcher bound this rank to 2 of the job's 4 CPUs: affinity already is its share.
  Environment pmi{{"PMI_RANK", "0"}, {"PMI_SIZE", "2"}, {"MPI_LOCALNRANKS", "2"}};
  auto a = detect("v2_job_bound", pmi);
  EXPECT_EQ(a.cpus, 2);
  EXPECT_EQ(a.cpus_source, "/proc/self/status Cpus_allowed_list = 4-5");
  EXPECT_TRUE(a.warnings.empty()) << all_warnings(a);
  auto many = detect("v2_job_cpuset", {{"PMI_RANK", "0"}, {"PMI_SIZE", "8"}, {"MPI_LOCALNRANKS", "8"}});
  EXPECT_EQ(many.cpus, 1);  // 4 CPUs for 8 unbound ranks: at least 1 each
  EXPECT_TRUE(warned(many, {"8 MPI ranks on this node x 1 thread each = 8", "node's 4 CPUs (cgroup cpuset)"}))
      << all_warnings(many);
}
