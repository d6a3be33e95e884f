// Data parallelism across processes on PyTorch's own engine, c10d: Gloo on the CPU, with a
// TCPStore for the rendezvous. Ranks come from the environment variables torchrun sets
// (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), so `torchrun`-style launches,
// cluster schedulers and `rlhf launch` (below) all work. Without them the world is one
// process and every collective returns at once.
//
// A rank that dies makes the others' next collective fail within `timeout` with an Error
// naming the rank that saw it, never a hang.
#pragma once
#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace rlhf {

struct DistEnv {
  int rank = 0, world = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int master_port = 29500;
};

// Reads the variables above; Error for malformed or inconsistent values (RANK without
// WORLD_SIZE, RANK >= WORLD_SIZE, a port outside 1-65535, ...). None set: one process.
DistEnv dist_env_from_environment();

class ProcessGroup {
 public:
  // world 1: no sockets, no threads. Else connects (rank 0 hosts the store) and waits up
  // to `timeout` for every rank.
  explicit ProcessGroup(const DistEnv& env, std::chrono::milliseconds timeout = std::chrono::seconds(60));
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return env_.rank; }
  int world() const { return env_.world; }
  bool is_main() const { return env_.rank == 0; }  // the rank that writes metrics, checkpoints, models

  // In place: every tensor becomes the mean (sum) over ranks. Float tensors of one dtype;
  // they travel flattened into one buffer per call, so many small gradients cost one round.
  void allreduce_mean(const std::vector<torch::Tensor>& tensors);
  void allreduce_sum(const std::vector<torch::Tensor>& tensors);
  // Scalars (metrics, moment sums) summed over ranks, as float64.
  std::vector<double> allreduce_sum(const std::vector<double>& values);
  // Scalars: the largest over ranks, element by element.
  std::vector<double> allreduce_max(const std::vector<double>& values);
  // Starts summing a contiguous CPU float tensor over ranks in place and returns at once; the
  // returned function waits for it (Error when a rank failed). Collectives run in the order
  // they are started, which must be the same on every rank.
  std::function<void()> start_allreduce_sum(const torch::Tensor& buffer);
  // In place: every rank's tensors become rank `root`'s.
  void broadcast(const std::vector<torch::Tensor>& tensors, int root = 0);
  void barrier();

 private:
  struct Impl;
  DistEnv env_;
  std::unique_ptr<Impl> impl_;
};

// The process-wide group from dist_env_from_environment(), created on first use.
ProcessGroup& default_process_group();

// `rlhf launch`: runs `argv` as `nproc` processes on this machine with RANK/WORLD_SIZE/
// LOCAL_RANK/MASTER_ADDR/MASTER_PORT set (a free port unless `master_port` > 0), and
// OMP_NUM_THREADS = cores / nproc (at least 1) unless already set. Waits for all; when one
// fails, stops the others (SIGTERM, then SIGKILL after a grace period) and returns its exit
// status (128 + signal for a signal). Returns 0 when all succeed.
int launch_local(int nproc, const std::vector<std::string>& argv, int master_port = 0);

}  // namespace rlhf
