// shoal._core: Allocation and Topology as read-only records. Conversion only;
// shoal/allocation.py and shoal/topology.py turn them into Python dataclasses.
#include <nanobind/nanobind.h>
#include <nanobind/stl/map.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "registry.hpp"
#include "shoal/allocation.hpp"
#include "shoal/topology.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

void bind(nb::module_& m) {
  nb::class_<shoal::AllocationSource>(m, "AllocationSource")
      .def_ro("name", &shoal::AllocationSource::name)
      .def_ro("detail", &shoal::AllocationSource::detail)
      .def_ro("cpus", &shoal::AllocationSource::cpus);

  nb::class_<shoal::SlurmInfo>(m, "SlurmInfo")
      .def_ro("in_job", &shoal::SlurmInfo::in_job)
      .def_ro("in_step", &shoal::SlurmInfo::in_step)
      .def_ro("job_id", &shoal::SlurmInfo::job_id)
      .def_ro("cpus_per_task", &shoal::SlurmInfo::cpus_per_task)
      .def_ro("cpus_on_node", &shoal::SlurmInfo::cpus_on_node)
      .def_ro("job_cpus_per_node", &shoal::SlurmInfo::job_cpus_per_node)
      .def_ro("ntasks", &shoal::SlurmInfo::ntasks)
      .def_ro("job_num_nodes", &shoal::SlurmInfo::job_num_nodes)
      .def_ro("node_id", &shoal::SlurmInfo::node_id)
      .def_ro("tasks_per_node", &shoal::SlurmInfo::tasks_per_node);

  nb::class_<shoal::MpiInfo>(m, "MpiInfo")
      .def_ro("launcher", &shoal::MpiInfo::launcher)
      .def_ro("rank", &shoal::MpiInfo::rank)
      .def_ro("size", &shoal::MpiInfo::size)
      .def_ro("local_rank", &shoal::MpiInfo::local_rank)
      .def_ro("local_size", &shoal::MpiInfo::local_size);

  nb::class_<shoal::Allocation>(m, "Allocation")
      .def_ro("cpus", &shoal::Allocation::cpus)
      .def_ro("cpus_source", &shoal::Allocation::cpus_source)
      .def_ro("sources", &shoal::Allocation::sources)
      .def_ro("affinity", &shoal::Allocation::affinity)
      .def_ro("host_cpus", &shoal::Allocation::host_cpus)
      .def_ro("cgroup_version", &shoal::Allocation::cgroup_version)
      .def_ro("cgroup_path", &shoal::Allocation::cgroup_path)
      .def_ro("cgroup_quota_cpus", &shoal::Allocation::cgroup_quota_cpus)
      .def_ro("cgroup_cpuset", &shoal::Allocation::cgroup_cpuset)
      .def_ro("memory_limit_bytes", &shoal::Allocation::memory_limit_bytes)
      .def_ro("memory_limit_source", &shoal::Allocation::memory_limit_source)
      .def_ro("slurm", &shoal::Allocation::slurm)
      .def_ro("omp_num_threads", &shoal::Allocation::omp_num_threads)
      .def_ro("mpi", &shoal::Allocation::mpi)
      .def_ro("warnings", &shoal::Allocation::warnings);

  m.def("detect_allocation", nb::overload_cast<>(&shoal::Allocation::detect),
        "The allocation of this process (real environ, /proc, /sys, affinity).");
  m.def("detect_allocation",
        nb::overload_cast<const shoal::Environment&, const std::string&>(&shoal::Allocation::detect), "env"_a,
        "sys_root"_a, "The allocation as seen from an environment map and a /proc+/sys tree under sys_root.");
  m.def("default_concurrency", &shoal::default_concurrency);

  nb::class_<shoal::NumaNode>(m, "NumaNode")
      .def_ro("os_index", &shoal::NumaNode::os_index)
      .def_ro("memory_bytes", &shoal::NumaNode::memory_bytes);
  nb::class_<shoal::GpuDevice>(m, "GpuDevice")
      .def_ro("name", &shoal::GpuDevice::name)
      .def_ro("info", &shoal::GpuDevice::info);
  nb::class_<shoal::Topology>(m, "Topology")
      .def_ro("packages", &shoal::Topology::packages)
      .def_ro("cores", &shoal::Topology::cores)
      .def_ro("pus", &shoal::Topology::pus)
      .def_ro("numa_nodes", &shoal::Topology::numa_nodes)
      .def_ro("l1d_bytes", &shoal::Topology::l1d_bytes)
      .def_ro("l2_bytes", &shoal::Topology::l2_bytes)
      .def_ro("l3_bytes", &shoal::Topology::l3_bytes)
      .def_ro("l3_count", &shoal::Topology::l3_count)
      .def_ro("total_memory_bytes", &shoal::Topology::total_memory_bytes)
      .def_ro("gpus", &shoal::Topology::gpus)
      .def_ro("source", &shoal::Topology::source);
  m.def("detect_topology", &shoal::Topology::detect);
  m.def("detect_topology_from_sysfs", &shoal::Topology::detect_from_sysfs, "root"_a);
  m.def("topology_has_hwloc", &shoal::topology_has_hwloc);
}

shoal::py::Register reg(bind);

}  // namespace
