// Two independent pieces of CPU work at once, each on half of the intra-op threads.
//
// Small operators (PPO minibatches of a few short sequences through a small model) use two
// cores badly: each op splits its work and synchronizes, and many ops are too small to
// split at all. Running two independent jobs side by side, each on its own thread with a
// one-thread OpenMP team, keeps both cores busy: a PPO minibatch's forward+backward of the
// policy and of the value model (stories260K, 4 x ~66 tokens, 2 cores) takes 7.3-8.3 ms
// side by side against 14.5 ms one after the other with two threads each.
#pragma once
#include <functional>

namespace rlhf {

// Runs `a` on another thread and `b` on this one, each with half of ATen's intra-op threads
// (at least one), the caller's thread-local state (grad mode and the like) and denormals
// flushed on both threads while they run; waits for both and rethrows the first exception
// (a's, then b's). With two intra-op threads, `a` runs on this thread's OpenMP pool worker
// (no extra thread); with more, on a helper thread with its own team. With fewer than two
// it runs a then b on this thread. The two must not touch the same tensors' data or
// gradients.
void side_by_side(const std::function<void()>& a, const std::function<void()>& b);

}  // namespace rlhf
