// GPU discovery for `--backend cuda`: which devices exist and whether they can run DwarfStar.
// Declared in plain C++ so programs can call it without CUDA headers.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace ds4::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;  // compute capability
  size_t total_bytes = 0, free_bytes = 0;
  int sm_count = 0;
};

// All visible CUDA devices; empty when there is no driver or no GPU (never throws).
std::vector<DeviceInfo> list_devices();

// Throws ds4::Error with a sentence the user can act on when no usable GPU is present
// (no driver / no device / compute capability below 8.0).
DeviceInfo require_device(int index = 0);

}  // namespace ds4::cuda
