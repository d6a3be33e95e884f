// Two independent pieces of CPU work at once, each on half of the intra-op threads.
//
// Small operators (PPO minibatches of a few short sequences through a small model) use two
// cores badly: each op splits its work and synchronizes, and many ops are too small to
// split at all. Running two independent jobs side by side, each on its own thread with a
// one-thread OpenMP team, kept both cores busy: one forward+backward of the policy and one
// of the value model took 10.4 ms side by side against 13.6-15.0 ms one after the other
// (stories260K, 4 x 50 tokens, 2 cores).
#pragma once
#include <functional>

namespace rlhf {

// Runs `a` on a helper thread and `b` on this one, each with half of ATen's intra-op
// threads (at least one), the caller's thread-local state (grad mode and the like) and
// denormals flushed on both threads while they run; waits for both and rethrows the first
// exception (a's, then b's). With fewer than two intra-op threads it runs a then b on this
// thread. The two must not touch the same tensors' data or gradients.
void side_by_side(const std::function<void()>& a, const std::function<void()>& b);

}  // namespace rlhf
