#include "shoal/nvml_probe.hpp"

#include <dlfcn.h>

namespace shoal {

// The few NVML entry points used, with the C API's types (nvml.h): a device
// handle is an opaque pointer, every call returns 0 (NVML_SUCCESS) or an error.
struct NvmlProbe::Api {
  struct Utilization {
    unsigned int gpu;
    unsigned int memory;
  };
  struct Memory {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
  };
  void* lib = nullptr;
  int (*init)() = nullptr;
  int (*shutdown)() = nullptr;
  int (*count)(unsigned int*) = nullptr;
  int (*handle)(unsigned int, void**) = nullptr;
  int (*name)(void*, char*, unsigned int) = nullptr;
  int (*utilization)(void*, Utilization*) = nullptr;
  int (*memory)(void*, Memory*) = nullptr;
  bool initialized = false;

  ~Api() {
    if (initialized && shutdown != nullptr) shutdown();
    if (lib != nullptr) dlclose(lib);
  }
};

namespace {
template <class F>
bool load(void* lib, const char* symbol, F& fn) {
  fn = reinterpret_cast<F>(dlsym(lib, symbol));
  return fn != nullptr;
}
}  // namespace

std::unique_ptr<NvmlProbe> NvmlProbe::open(std::string& why) {
  auto api = std::make_unique<Api>();
  api->lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (api->lib == nullptr) {
    why = "no NVIDIA GPU monitoring: libnvidia-ml.so.1 (the NVIDIA driver's NVML) is not there";
    return nullptr;
  }
  if (!load(api->lib, "nvmlInit_v2", api->init) || !load(api->lib, "nvmlShutdown", api->shutdown) ||
      !load(api->lib, "nvmlDeviceGetCount_v2", api->count) ||
      !load(api->lib, "nvmlDeviceGetHandleByIndex_v2", api->handle) ||
      !load(api->lib, "nvmlDeviceGetName", api->name) ||
      !load(api->lib, "nvmlDeviceGetUtilizationRates", api->utilization) ||
      !load(api->lib, "nvmlDeviceGetMemoryInfo", api->memory)) {
    why = "no NVIDIA GPU monitoring: this NVML lacks a function shoal uses";
    return nullptr;
  }
  if (const int rc = api->init(); rc != 0) {
    why = "no NVIDIA GPU (nvmlInit failed with NVML error " + std::to_string(rc) + ")";
    return nullptr;
  }
  api->initialized = true;
  unsigned int n = 0;
  if (api->count(&n) != 0 || n == 0) {
    why = "no NVIDIA GPU (NVML found none)";
    return nullptr;
  }
  std::unique_ptr<NvmlProbe> p(new NvmlProbe());
  for (unsigned int i = 0; i < n; ++i) {
    void* dev = nullptr;
    if (api->handle(i, &dev) != 0) continue;
    char name[96] = {};
    if (api->name(dev, name, sizeof name) != 0) name[0] = '\0';
    p->devices_.push_back(dev);
    p->names_.emplace_back(name);
  }
  if (p->devices_.empty()) {
    why = "no NVIDIA GPU (NVML could not open any)";
    return nullptr;
  }
  p->api_ = std::move(api);
  return p;
}

NvmlProbe::~NvmlProbe() = default;

void NvmlProbe::sample(std::int64_t t, std::vector<GpuSampleRecord>& out) const {
  for (std::size_t i = 0; i < devices_.size(); ++i) {
    Api::Utilization u{};
    Api::Memory m{};
    if (api_->utilization(devices_[i], &u) != 0 || api_->memory(devices_[i], &m) != 0) continue;
    out.push_back(GpuSampleRecord{t, static_cast<std::uint32_t>(i), static_cast<float>(u.gpu),
                                  m.used, m.total});
  }
}

}  // namespace shoal
