// Topology: hwloc and the /proc+/sys fallback must agree on this machine.
#include <gtest/gtest.h>
#include <unistd.h>

#include "shoal/topology.hpp"

TEST(Topology, DetectIsSane) {
  auto t = shoal::Topology::detect();
  EXPECT_GE(t.packages, 1);
  EXPECT_GE(t.cores, t.packages);
  EXPECT_GE(t.pus, t.cores);
  EXPECT_FALSE(t.numa_nodes.empty());
  EXPECT_GT(t.total_memory_bytes, 0u);
  EXPECT_FALSE(t.source.empty());
  EXPECT_EQ(t.source.rfind("hwloc", 0) == 0, shoal::topology_has_hwloc()) << t.source;
}

TEST(Topology, SysfsFallbackAgreesWithDetect) {
  auto t = shoal::Topology::detect();
  auto f = shoal::Topology::detect_from_sysfs("/");
  EXPECT_EQ(f.source, "/proc and /sys");
  EXPECT_EQ(f.pus, t.pus);
  EXPECT_EQ(f.cores, t.cores);
  EXPECT_EQ(f.packages, t.packages);
  EXPECT_EQ(f.numa_nodes.size(), t.numa_nodes.size());
  EXPECT_EQ(f.l1d_bytes, t.l1d_bytes);
  EXPECT_EQ(f.l2_bytes, t.l2_bytes);
  EXPECT_EQ(f.l3_bytes, t.l3_bytes);
  EXPECT_EQ(f.gpus.size(), t.gpus.size());
  EXPECT_EQ(f.pus, static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN)));
}

TEST(Topology, MissingRootGivesEmptyNotCrash) {
  auto f = shoal::Topology::detect_from_sysfs(std::string(SHOAL_FIXTURES) + "/does-not-exist");
  EXPECT_EQ(f.pus, 0);
  EXPECT_EQ(f.cores, 0);
  EXPECT_TRUE(f.gpus.empty());
}
