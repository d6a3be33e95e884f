// One training step's forward and backward, timed and profiled by operator: where a step of
// the trainers goes. Not a comparison with a peer (bench/train_vs_trl.py is); a tool for
// finding what to speed up next.
//   bench_step MODEL BATCH LENGTH [ITERS] [--bf16] [--checkpoint] [--profile | --attention]
// Runs the reward-model shape (scores at the last token; the LM head is not used) on random
// tokens, right-padded rows of LENGTH tokens. Prints seconds per forward+backward; with
// --profile, libtorch's per-operator self times (ms per step); with --attention, our attention
// kernel alone at the model's head shape, forward and backward. --bf16: the forward under bf16
// autocast (precision = "bf16"); --checkpoint: activation checkpointing (checkpoint_activations).
#include <algorithm>
#include <chrono>
#include <iostream>
#include <map>

#include "kernels/attention_kernel.h"
#include "kernels/cpu_kernels.h"
#include "model/autocast.h"
#include "model/model.h"
#include "train/profile.h"

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: bench_step MODEL BATCH LENGTH [ITERS] [--profile]\n";
    return 2;
  }
  try {
    rlhf::flush_denormals_on_cpu_threads();  // as the CLI does (RLHF_DENORMALS=keep to compare)
    auto lm = rlhf::load_model(argv[1]);
    const int64_t B = std::stol(argv[2]), T = std::stol(argv[3]);
    const int iters = argc > 4 && argv[4][0] != '-' ? std::stoi(argv[4]) : 10;
    const bool profile = std::string(argv[argc - 1]) == "--profile";
    torch::manual_seed(0);
    auto tokens = torch::randint(1, lm.config.vocab_size, {B, T}, torch::kLong);
    auto mask = torch::ones({B, T}, torch::kLong);
    auto has = [&](const std::string& flag) { return std::find(argv + 4, argv + argc, flag) != argv + argc; };
    const bool bf16 = has("--bf16");
    lm.model->set_checkpoint_activations(has("--checkpoint"));
    auto step = [&] {
      torch::Tensor loss;
      {
        const rlhf::Autocast autocast(lm.model->device(), bf16);  // the forward only, as the trainers do
        auto h = lm.model->hidden_states(tokens, {}, mask);
        loss = h.select(1, T - 1).square().sum();
      }
      loss.backward();
    };
    if (std::string(argv[argc - 1]) == "--attention") {  // the attention kernel alone, at this model's heads
      const auto& c = lm.config;
      auto qkv = torch::randn({B, T, c.num_heads + 2 * c.num_kv_heads, c.head_dim}).requires_grad_();
      auto pos = torch::arange(T, torch::kFloat32).view({1, T, 1, 1});
      auto cos = torch::cos(pos * 0.1).expand({1, T, 1, c.head_dim}), sin = torch::sin(pos * 0.1).expand({1, T, 1, c.head_dim});
      auto g = torch::randn({B, T, c.num_heads, c.head_dim});
      double fwd = 0, bwd = 0;
      for (int i = 0; i < iters + 2; ++i) {
        auto t0 = std::chrono::steady_clock::now();
        auto y = rlhf::causal_attention_cpu(qkv, c.num_heads, c.num_kv_heads, cos, sin);
        auto t1 = std::chrono::steady_clock::now();
        y.backward(g);
        auto t2 = std::chrono::steady_clock::now();
        if (i >= 2) fwd += std::chrono::duration<double>(t1 - t0).count(), bwd += std::chrono::duration<double>(t2 - t1).count();
      }
      std::cout << "attention ms per layer: forward " << fwd / iters * 1e3 << ", backward " << bwd / iters * 1e3 << "\n";
      auto h = torch::randn({B, T, 2 * c.intermediate_size}).requires_grad_();
      auto gh = torch::randn({B, T, c.intermediate_size});
      fwd = bwd = 0;
      for (int i = 0; i < iters + 2; ++i) {
        auto t0 = std::chrono::steady_clock::now();
        auto y = rlhf::fused_swiglu(h);
        auto t1 = std::chrono::steady_clock::now();
        y.backward(gh);
        auto t2 = std::chrono::steady_clock::now();
        if (i >= 2) fwd += std::chrono::duration<double>(t1 - t0).count(), bwd += std::chrono::duration<double>(t2 - t1).count();
      }
      std::cout << "swiglu ms per layer: forward " << fwd / iters * 1e3 << ", backward " << bwd / iters * 1e3 << "\n";
      return 0;
    }
    for (int i = 0; i < 3; ++i) step();
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) step();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
    std::cout << "seconds per forward+backward: " << s << "\n";
    {
      torch::NoGradGuard no_grad;
      auto t1 = std::chrono::steady_clock::now();
      const rlhf::Autocast autocast(lm.model->device(), bf16);
      for (int i = 0; i < iters; ++i) lm.model->hidden_states(tokens, {}, mask);
      std::cout << "seconds per forward without gradients: "
                << std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count() / iters << "\n";
    }
    if (!profile) return 0;
    rlhf::start_profile();
    for (int i = 0; i < iters; ++i) step();
    rlhf::stop_profile(std::cout, iters);
  } catch (const std::exception& e) {
    std::cerr << "bench_step: " << e.what() << "\n";
    return 1;
  }
}
