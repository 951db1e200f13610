// Device side of GpuSession's decision log (tests only): copies a step's discrete choices
// (routing ids, indexer selection) into the slot of the chunk's current step, so a captured
// step graph records them for every replay without host synchronization.
#pragma once

#include <cstdint>

#include "backend/cuda/forward_kernels.h"

namespace ds4::cuda::fwd {

// dst[ctl->index * stride + i] = src[i] for i < n.
void copy_to_step_slot(const int32_t* src, int64_t n, int32_t* dst, int64_t stride, const StepCtl* ctl,
                       void* stream);

}  // namespace ds4::cuda::fwd
