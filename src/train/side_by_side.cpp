#include "train/side_by_side.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <omp.h>

#include <exception>
#include <thread>

#if defined(__x86_64__)
#include "model/avx512_math.h"  // FlushDenormals
#endif

namespace rlhf {

namespace {

// Runs f with an OpenMP team of `threads` on this thread (denormals flushed on it, as
// model/cpu_kernels.h explains), then restores the team size and the floating-point mode.
void with_threads(int threads, const std::function<void()>& f, std::exception_ptr& error) {
#if defined(__x86_64__)
  const avx512::FlushDenormals flush;
#endif
  at::get_num_threads();  // ATen's lazy per-thread init first, so it cannot undo the line below
  const int before = omp_get_max_threads();
  omp_set_num_threads(threads);
  try {
    f();
  } catch (...) {
    error = std::current_exception();
  }
  omp_set_num_threads(before);
}

}  // namespace

void side_by_side(const std::function<void()>& a, const std::function<void()>& b) {
  const int n = at::get_num_threads();
  if (n < 2 || at::in_parallel_region()) {
    a();
    b();
    return;
  }
  const int half = n / 2;
  std::exception_ptr error_a, error_b;
  const at::ThreadLocalState state;  // grad mode etc. of the caller, for the helper thread
  std::thread helper([&] {
    at::ThreadLocalStateGuard guard(state);
    with_threads(half, a, error_a);
  });
  with_threads(n - half, b, error_b);
  helper.join();
  if (error_a) std::rethrow_exception(error_a);
  if (error_b) std::rethrow_exception(error_b);
}

}  // namespace rlhf
