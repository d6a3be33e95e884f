// Operator-level profiles of one training step, for finding what to speed up next.
// RLHF_PROFILE=N in the environment makes the trainers profile their step N (a PPO
// iteration for `rlhf ppo`) with libtorch's profiler and print each operator's self time,
// summed over threads, to stderr.
#pragma once
#include <cstdint>
#include <ostream>

namespace rlhf {

class StepProfiler {
 public:
  // Profiles until destroyed when `step` is the step RLHF_PROFILE names.
  explicit StepProfiler(int64_t step);
  ~StepProfiler();
  StepProfiler(const StepProfiler&) = delete;
  StepProfiler& operator=(const StepProfiler&) = delete;

 private:
  bool on_ = false;
};

// Starts libtorch's CPU profiler; stop_profile ends it and writes the `rows` operators with
// the most self time (ms, divided by `repeats`) to `out`.
void start_profile();
void stop_profile(std::ostream& out, int repeats = 1, int rows = 30);

}  // namespace rlhf
