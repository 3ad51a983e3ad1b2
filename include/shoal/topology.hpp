// shoal/topology.hpp — the machine's shape: packages, cores, hardware threads,
// NUMA nodes, caches, memory, GPUs. From hwloc when libshoal was built with it,
// otherwise from /proc and /sys (detect_from_sysfs, always available).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace shoal {

struct NumaNode {
  int os_index = 0;
  std::uint64_t memory_bytes = 0;  // local memory of the node, 0 when unknown
};

struct GpuDevice {
  std::string name;  // OS device name, e.g. "cuda0", "card0", "nvidia0"
  std::string info;  // model / backend when known, e.g. "NVIDIA H100 (CUDA)"
};

struct Topology {
  int packages = 0;        // sockets
  int cores = 0;           // physical cores
  int pus = 0;             // hardware threads (processing units)
  std::vector<NumaNode> numa_nodes;
  std::uint64_t l1d_bytes = 0;  // size of one cache of that level (the first found), 0 if none
  std::uint64_t l2_bytes = 0;
  std::uint64_t l3_bytes = 0;
  int l3_count = 0;             // how many L3 caches (one per package, per CCX, ...)
  std::uint64_t total_memory_bytes = 0;
  std::vector<GpuDevice> gpus;  // empty: none detected
  std::string source;           // "hwloc 2.9.0" or "/proc and /sys"

  // hwloc if available, else detect_from_sysfs("/").
  static Topology detect();
  // The fallback: /proc/cpuinfo, /proc/meminfo, /sys/devices/system/{cpu,node} under root.
  static Topology detect_from_sysfs(const std::string& root);
};

// True when libshoal was compiled against hwloc.
bool topology_has_hwloc();

}  // namespace shoal
