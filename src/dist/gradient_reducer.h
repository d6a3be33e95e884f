// Gradients summed over ranks while the backward pass still runs, as PyTorch's DDP does: the
// parameters are grouped into buckets of about `bucket_bytes` in the reverse of their order (the
// order the backward pass completes them), and each bucket's all-reduce starts as soon as the
// last of its gradients is final, so communication overlaps the rest of the backward pass.
//
// With gradient accumulation only the optimizer step's last backward pass sends anything (arm()
// before it); the gradients it sends are the accumulated ones. Buckets start strictly in index
// order, whichever thread's backward pass completes them (PPO runs the policy's and the value
// model's side by side), so every rank issues the same collectives in the same order. A
// parameter that no rank gave a gradient keeps none, as in one process.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "dist/process_group.h"

namespace rlhf {

class GradientReducer {
 public:
  // params: the trainable parameters (float, CPU); hooks are registered on each (world > 1 only).
  GradientReducer(ProcessGroup& group, std::vector<torch::Tensor> params, int64_t bucket_bytes = 25ll << 20);
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Before the optimizer step's last backward pass(es).
  void arm();
  // After them: starts the buckets that are still waiting (their missing gradients count as 0),
  // waits for all, and leaves every parameter's .grad the sum over ranks. `figures` (this rank's
  // metric sums) are summed over ranks in the same round as the has-gradient flags.
  void finish(std::vector<double>& figures);

  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Buckets of the last step whose all-reduce started inside the backward pass.
  int64_t started_in_backward() const { return started_in_backward_; }

 private:
  struct Bucket {
    std::vector<size_t> params;  // indices into params_
    std::vector<int64_t> offsets;
    torch::Tensor buffer;        // flat, the bucket's gradients
    size_t missing = 0;          // gradients not yet final in this step
    std::function<void()> wait;
  };
  void on_gradient(size_t i, const torch::Tensor& grad);
  void start_ready();  // under mutex_: buckets in index order while the next is complete

  ProcessGroup& group_;
  std::vector<torch::Tensor> params_;
  std::vector<unsigned> hooks_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_, slot_of_;
  std::vector<uint8_t> has_grad_;
  std::mutex mutex_;
  bool armed_ = false;
  size_t next_ = 0;  // the next bucket to start
  int64_t started_in_backward_ = 0;
};

}  // namespace rlhf
