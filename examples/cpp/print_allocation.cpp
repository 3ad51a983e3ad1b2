// What this process was given, from C++: the same numbers `shoal info` prints.
#include <shoal/shoal.hpp>

#include <iostream>

int main() {
  const shoal::Allocation a = shoal::Allocation::detect();
  std::cout << "shoal " << shoal::version << "\n";
  std::cout << "cpus: " << a.cpus << "\n";
  std::cout << "source: " << a.cpus_source << "\n";
  for (const auto& s : a.sources) std::cout << "  limit " << s.cpus << "  " << s.name << ": " << s.detail << "\n";
  std::cout << "host_cpus: " << a.host_cpus << "\n";
  std::cout << "default_concurrency: " << shoal::default_concurrency() << "\n";
  for (const auto& w : a.warnings) std::cout << "warning: " << w << "\n";

  const shoal::Topology t = shoal::Topology::detect();
  std::cout << "topology (" << t.source << "): " << t.packages << " packages, " << t.cores << " cores, " << t.pus
            << " PUs, " << t.numa_nodes.size() << " NUMA nodes, " << t.gpus.size() << " GPUs\n";
  return 0;
}
