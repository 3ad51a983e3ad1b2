// Topology::detect: hwloc when built with it (the reference for this), else a
// small reader of /proc and /sys that knows the same counts on Linux.
#include "shoal/topology.hpp"

#include <dirent.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <utility>

#include "shoal/allocation.hpp"  // parse::cpu_list, parse::integer

#if SHOAL_HAVE_HWLOC
#include <hwloc.h>
#endif

namespace shoal {

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path);
  std::ostringstream s;
  if (in) s << in.rdbuf();
  return s.str();
}

// "32K" / "512K" / "32768K" / "1M" (sysfs cache sizes) -> bytes; 0 when malformed.
std::uint64_t size_text(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  std::uint64_t mult = 1;
  if (!text.empty() && (text.back() == 'K' || text.back() == 'M' || text.back() == 'G')) {
    mult = text.back() == 'K' ? 1024ull : text.back() == 'M' ? 1024ull * 1024 : 1024ull * 1024 * 1024;
    text.pop_back();
  }
  auto n = parse::integer(text);
  return n && *n > 0 ? static_cast<std::uint64_t>(*n) * mult : 0;
}

// "MemTotal:       24684096 kB" found after `key` in text -> bytes.
std::uint64_t meminfo_field(const std::string& text, const std::string& key) {
  auto pos = text.find(key);
  if (pos == std::string::npos) return 0;
  std::istringstream in(text.substr(pos + key.size()));
  std::uint64_t kb = 0;
  in >> kb;
  return in ? kb * 1024 : 0;
}

std::vector<std::string> list_dir(const std::string& path) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(path.c_str())) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') names.emplace_back(e->d_name);
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

}  // namespace

Topology Topology::detect_from_sysfs(const std::string& root_in) {
  std::string root = root_in;
  while (!root.empty() && root.back() == '/') root.pop_back();
  Topology t;
  t.source = "/proc and /sys";
  const std::string cpu_dir = root + "/sys/devices/system/cpu";
  auto online = parse::cpu_list(slurp(cpu_dir + "/online")).value_or(std::vector<int>{});
  if (online.empty()) {  // count "processor" lines instead
    std::istringstream in(slurp(root + "/proc/cpuinfo"));
    std::string line;
    int n = 0;
    while (std::getline(in, line))
      if (line.rfind("processor", 0) == 0) online.push_back(n++);
  }
  t.pus = static_cast<int>(online.size());

  std::set<std::pair<long long, long long>> cores;
  std::set<long long> packages;
  std::set<std::string> l3_groups;
  for (int c : online) {
    const std::string base = cpu_dir + "/cpu" + std::to_string(c);
    auto pkg = parse::integer(slurp(base + "/topology/physical_package_id"));
    auto core = parse::integer(slurp(base + "/topology/core_id"));
    if (pkg && core) {
      packages.insert(*pkg);
      cores.insert({*pkg, *core});
    }
    for (const auto& idx : list_dir(base + "/cache")) {
      if (idx.rfind("index", 0) != 0) continue;
      const std::string cdir = base + "/cache/" + idx;
      auto level = parse::integer(slurp(cdir + "/level"));
      std::string type = slurp(cdir + "/type");
      if (!level || type.rfind("Instruction", 0) == 0) continue;
      std::uint64_t bytes = size_text(slurp(cdir + "/size"));
      if (*level == 1 && !t.l1d_bytes) t.l1d_bytes = bytes;
      if (*level == 2 && !t.l2_bytes) t.l2_bytes = bytes;
      if (*level == 3) {
        if (!t.l3_bytes) t.l3_bytes = bytes;
        l3_groups.insert(slurp(cdir + "/shared_cpu_list"));
      }
    }
  }
  t.packages = packages.empty() ? (t.pus > 0 ? 1 : 0) : static_cast<int>(packages.size());
  t.cores = cores.empty() ? t.pus : static_cast<int>(cores.size());
  t.l3_count = static_cast<int>(l3_groups.size());

  const std::string node_dir = root + "/sys/devices/system/node";
  for (int n : parse::cpu_list(slurp(node_dir + "/online")).value_or(std::vector<int>{})) {
    std::string meminfo = slurp(node_dir + "/node" + std::to_string(n) + "/meminfo");
    t.numa_nodes.push_back({n, meminfo_field(meminfo, "MemTotal:")});
  }
  t.total_memory_bytes = meminfo_field(slurp(root + "/proc/meminfo"), "MemTotal:");
  if (t.numa_nodes.empty()) t.numa_nodes.push_back({0, t.total_memory_bytes});

  // NVIDIA's driver lists its GPUs here; other vendors need hwloc.
  for (const auto& gpu : list_dir(root + "/proc/driver/nvidia/gpus")) {
    std::string info = slurp(root + "/proc/driver/nvidia/gpus/" + gpu + "/information");
    std::string model;
    if (auto pos = info.find("Model:"); pos != std::string::npos) {
      model = info.substr(pos + 6, info.find('\n', pos) - pos - 6);
      model.erase(0, model.find_first_not_of(" \t"));
    }
    t.gpus.push_back({"nvidia" + std::to_string(t.gpus.size()), model.empty() ? "NVIDIA GPU" : model});
  }
  return t;
}

#if SHOAL_HAVE_HWLOC

bool topology_has_hwloc() { return true; }

Topology Topology::detect() {
  hwloc_topology_t topo = nullptr;
  if (hwloc_topology_init(&topo) != 0) return detect_from_sysfs("/");
  // Keep GPUs and co-processors (OS devices); the rest of the I/O tree is not needed.
  hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
#if HWLOC_API_VERSION >= 0x00020100
  // The "pci" component goes through libpciaccess, which leaks on every load
  // (LeakSanitizer); hwloc's linux component reads the PCI tree from sysfs itself.
  hwloc_topology_set_components(topo, HWLOC_TOPOLOGY_COMPONENTS_FLAG_BLACKLIST, "pci");
#endif
  if (hwloc_topology_load(topo) != 0) {
    hwloc_topology_destroy(topo);
    return detect_from_sysfs("/");
  }
  Topology t;
  t.source = std::string("hwloc ") + HWLOC_VERSION;
  t.packages = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PACKAGE);
  t.cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
  t.pus = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_PU);
  if (t.packages <= 0) t.packages = 1;
  if (t.cores <= 0) t.cores = t.pus;
  const int nodes = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
  for (int i = 0; i < nodes; ++i) {
    hwloc_obj_t n = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, static_cast<unsigned>(i));
    t.numa_nodes.push_back({static_cast<int>(n->os_index), n->attr ? n->attr->numanode.local_memory : 0});
  }
  auto first_cache = [&](hwloc_obj_type_t type) -> std::uint64_t {
    hwloc_obj_t c = hwloc_get_obj_by_type(topo, type, 0);
    return c && c->attr ? c->attr->cache.size : 0;
  };
  t.l1d_bytes = first_cache(HWLOC_OBJ_L1CACHE);
  t.l2_bytes = first_cache(HWLOC_OBJ_L2CACHE);
  t.l3_bytes = first_cache(HWLOC_OBJ_L3CACHE);
  t.l3_count = std::max(0, hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_L3CACHE));
  t.total_memory_bytes = hwloc_get_root_obj(topo)->total_memory;
  for (hwloc_obj_t os = hwloc_get_next_osdev(topo, nullptr); os != nullptr; os = hwloc_get_next_osdev(topo, os)) {
    auto type = os->attr->osdev.type;
    if (type != HWLOC_OBJ_OSDEV_GPU && type != HWLOC_OBJ_OSDEV_COPROC) continue;
    std::string info;
    for (const char* key : {"GPUModel", "CoProcType", "Backend"})
      if (const char* v = hwloc_obj_get_info_by_name(os, key)) info += (info.empty() ? "" : " / ") + std::string(v);
    t.gpus.push_back({os->name ? os->name : "gpu", info});
  }
  hwloc_topology_destroy(topo);
  return t;
}

#else

bool topology_has_hwloc() { return false; }

Topology Topology::detect() { return detect_from_sysfs("/"); }

#endif

}  // namespace shoal
