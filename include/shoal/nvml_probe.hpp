// shoal/nvml_probe.hpp — GPU samples through NVML, loaded at run time.
//
// libnvidia-ml.so.1 comes with the NVIDIA driver; it is dlopen()ed, never
// linked, so shoal builds and runs where there is none (then open() says why
// and the monitor records no GPU samples). Used by the Sampler thread only.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace shoal {

#pragma pack(push, 1)
struct GpuSampleRecord {  // = GPU_SAMPLE_DTYPE (shoal/monitor/_run.py)
  std::int64_t t;
  std::uint32_t gpu;
  float util;              // percent
  std::uint64_t mem_used;  // bytes
  std::uint64_t mem_total;
};
#pragma pack(pop)
static_assert(sizeof(GpuSampleRecord) == 32);

class NvmlProbe {
 public:
  // The probe, or null with `why` saying what is missing (no library, no
  // device, an NVML error).
  static std::unique_ptr<NvmlProbe> open(std::string& why);
  NvmlProbe(const NvmlProbe&) = delete;
  NvmlProbe& operator=(const NvmlProbe&) = delete;
  ~NvmlProbe();

  const std::vector<std::string>& names() const noexcept { return names_; }
  // One record per GPU (those whose queries fail are left out).
  void sample(std::int64_t t, std::vector<GpuSampleRecord>& out) const;

 private:
  NvmlProbe() = default;
  struct Api;
  std::unique_ptr<Api> api_;
  std::vector<void*> devices_;
  std::vector<std::string> names_;
};

}  // namespace shoal
