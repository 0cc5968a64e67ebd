// Element-wise sums for the shared-memory communicator, in one fixed order:
// dst = src[0] + src[1] + ... + src[n-1], left to right, for every element, so the result does
// not depend on the ISA, the chunking or the algorithm (docs/communication.md). No FMA and no
// reassociation: every path, vector or scalar, performs the same IEEE additions.
#pragma once

#include <cstddef>
#include <cstdint>

#include "tpl/cpu_isa.h"

namespace tpl::shm {

// The widest sum kernel `isa` allows: "avx512", "avx2" or "scalar".
const char* sum_kernel_name(CpuIsa isa);
// dst[i] = src[0][i] + ... + src[n-1][i] in f32 (dst may alias any src[k]); when dst2 is not
// null, the same sums are stored there too (the two-shot all-reduce writes its segment into the
// caller's buffer and into the result slot the peers read, in one pass).
void sum_f32(const float* const* src, int n, float* dst, std::size_t count, CpuIsa isa,
             float* dst2 = nullptr);
// The same for int32 (wrap-around adds, exact in any order).
void sum_i32(const std::int32_t* const* src, int n, std::int32_t* dst, std::size_t count);

}  // namespace tpl::shm
