// Test harness for single- and multi-rank GoogleTest programs.
//
// Multi-rank tests run the same binary on every rank under mpirun (CTest entries _np1.._np4).
// Verdicts are collective: each rank computes its own failure message, then expect_agreed()
// gathers every rank's message so that all ranks fail together and the report names the rank,
// the first bad index, and the expected and actual values.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <memory>

#include "tpl/communicator.h"
#include "tpl/error.h"
#include "tpl/gemm.h"
#include "tpl/tensor.h"

namespace tpl::testing {

// The world communicator of the running test program (set up by the MPI test main).
Communicator& world();

// Empty when equal within |a - e| <= atol + rtol * |e| everywhere (atol = rtol = 0: bit-exact,
// with -0 == +0). Otherwise a message naming `label`, the count of mismatches, the first bad
// (row, col), expected and actual values, and the largest absolute error.
std::string compare(const TensorView& actual, const TensorView& expected, double atol, double rtol,
                    const std::string& label);

// Gathers every member's message; if any is non-empty, records a gtest failure on every rank
// listing "[rank r] message" for each failing rank.
void expect_agreed(Communicator& comm, const std::string& local_failure);

// All members' strings, in member order.
std::vector<std::string> all_gather_strings(Communicator& comm, const std::string& s);

// Deterministic test data, identical on every rank for the same seed.
// Small integers in [-range, range] are exact in f32 and bf16 sums of modest length.
Tensor random_ints(std::int64_t rows, std::int64_t cols, int range, std::uint64_t seed,
                   DType dtype = DType::kF32);
Tensor random_normal(std::int64_t rows, std::int64_t cols, float stddev, std::uint64_t seed,
                     DType dtype = DType::kF32);

// The message of the tpl::Error `f` throws, or "(no exception)".
template <typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no exception)";
}

// One CPU GEMM implementation by name (as the chooser lists them, e.g. "openblas"), planned
// through a chooser that forces it (list order, no timing, with the exactness probe).
std::unique_ptr<Gemm> make_impl_gemm(const std::string& impl, const GemmDesc& desc,
                                     TensorView weight, TensorView bias);
// The CPU implementations this build lists for desc's dtypes, in list order, the reference
// excluded (it is the oracle the others are compared with).
std::vector<std::string> listed_impls(const GemmDesc& desc);
// Why `impl` cannot serve desc on this CPU (under TPL_CPU_ISA), or "" when it can.
std::string why_impl_cannot_serve(const std::string& impl, const GemmDesc& desc);

}  // namespace tpl::testing
