#include "backend/cuda/device.h"

#include <cuda_runtime_api.h>

#include "core/error.h"

namespace ds4::cuda {

std::vector<DeviceInfo> list_devices() {
  std::vector<DeviceInfo> out;
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return out;
  }
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, i) != cudaSuccess) continue;
    DeviceInfo d;
    d.index = i;
    d.name = p.name;
    d.cc_major = p.major;
    d.cc_minor = p.minor;
    d.total_bytes = p.totalGlobalMem;
    d.sm_count = p.multiProcessorCount;
    size_t free_b = 0, total_b = 0;
    if (cudaSetDevice(i) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
      d.free_bytes = free_b;
    out.push_back(d);
  }
  return out;
}

DeviceInfo require_device(int index) {
  const auto devs = list_devices();
  if (devs.empty())
    fail("--backend cuda: no CUDA GPU is available (no NVIDIA driver or no device); use --backend cpu");
  if (index < 0 || index >= static_cast<int>(devs.size()))
    fail("--backend cuda: GPU {} does not exist ({} visible)", index, devs.size());
  const DeviceInfo& d = devs[index];
  if (d.cc_major < 8)
    fail("--backend cuda: {} has compute capability {}.{}; DwarfStar needs 8.0 or newer",
         d.name, d.cc_major, d.cc_minor);
  return d;
}

}  // namespace ds4::cuda
