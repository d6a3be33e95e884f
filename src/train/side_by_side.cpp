#include "train/side_by_side.h"

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <omp.h>

#include <exception>
#include <thread>

#if defined(__x86_64__)
#include "kernels/avx512_math.h"  // FlushDenormals
#endif

namespace rlhf {

namespace {

// f(), its exception kept for later (both parts always run to the end).
void run(const std::function<void()>& f, std::exception_ptr& error) {
  try {
    f();
  } catch (...) {
    error = std::current_exception();
  }
}

void rethrow_first(const std::exception_ptr& error_a, const std::exception_ptr& error_b) {
  if (error_a) std::rethrow_exception(error_a);
  if (error_b) std::rethrow_exception(error_b);
}

// Runs f with an OpenMP team of `threads` on this thread (denormals flushed on it, as
// kernels/cpu_kernels.h explains), then restores the team size and the floating-point mode.
void with_threads(int threads, const std::function<void()>& f, std::exception_ptr& error) {
#if defined(__x86_64__)
  const avx512::FlushDenormals flush;
#endif
  at::get_num_threads();  // ATen's lazy per-thread init first, so it cannot undo the line below
  const int before = omp_get_max_threads();
  omp_set_num_threads(threads);
  run(f, error);
  omp_set_num_threads(before);
}

}  // namespace

void side_by_side(const std::function<void()>& a, const std::function<void()>& b) {
  const int n = at::get_num_threads();
  std::exception_ptr error_a, error_b;
  if (n < 2 || at::in_parallel_region()) {
    run(a, error_a);
    run(b, error_b);
    return rethrow_first(error_a, error_b);
  }
  const int half = n / 2;
  const at::ThreadLocalState state;  // grad mode etc. of the caller, for the helper thread
  if (n == 2) {
    // One thread each: the caller's own OpenMP team of two (itself and its pool worker).
    // A separate helper thread here competed for the second core with that pool worker,
    // which spins for a while after each of the caller's parallel regions (libgomp's
    // default wait policy): each part ran 25-40% of its time off the CPU, and a PPO
    // minibatch's pair of forward+backward passes took 12.6-14.3 ms instead of 7.3-8.3.
    // Inside the region ATen's parallel_for and MKL run on one thread by themselves; the
    // team size each part sees is set to 1 to match.
#pragma omp parallel num_threads(2)
    {
      const bool alone = omp_get_num_threads() < 2;  // the runtime may give fewer threads
      if (omp_get_thread_num() == 1) {
        at::ThreadLocalStateGuard guard(state);
        with_threads(1, a, error_a);
      } else {
        if (alone) with_threads(1, a, error_a);
        with_threads(1, b, error_b);
      }
    }
    return rethrow_first(error_a, error_b);
  }
  // More threads: a helper thread with its own team for `a`, this thread's team for `b`.
  std::thread helper([&] {
    at::ThreadLocalStateGuard guard(state);
    with_threads(half, a, error_a);
  });
  with_threads(n - half, b, error_b);
  helper.join();
  rethrow_first(error_a, error_b);
}

}  // namespace rlhf
