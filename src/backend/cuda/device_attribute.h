// Device attributes of the current GPU, queried once and cached. Usable from .cu files (no
// fmt); the definition is in check.cpp. Its own header rather than check.h, so that adding it
// did not rebuild every CUDA file.
#pragma once

#include <cuda_runtime_api.h>

namespace ds4::cuda {

// cudaDeviceGetAttribute of the current device, queried once per (device, attribute) and
// cached (thread-safe), e.g. cudaDevAttrMultiProcessorCount or
// cudaDevAttrMaxSharedMemoryPerBlockOptin.
int device_attribute(cudaDeviceAttr attr);

}  // namespace ds4::cuda
