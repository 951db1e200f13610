// Measured device-memory copy bandwidth: the physical limit the decode kernels are judged by.
#pragma once

#include <cstddef>

namespace ds4::cuda {
// Copies `bytes` (read + write) `iters` times with a vectorized kernel and returns the
// median achieved bandwidth in GB/s, counting bytes read plus bytes written.
double measure_copy_bandwidth(size_t bytes = size_t(1) << 30, int iters = 20);
}
