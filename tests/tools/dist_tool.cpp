// Test helper for tests/dist: one rank of a small collective program, run as several
// processes (by `rlhf launch` or the test itself).
//   rlhf_dist_tool collectives   all-reduce (mean, sum, max, scalars) and broadcast of rank-dependent
//                                values; rank 0 prints what every rank must agree on
//   rlhf_dist_tool buckets       gradients summed by dist/gradient_reducer.h over 2 micro-batches:
//                                one bucket per parameter; prints how many started inside the
//                                backward pass and the largest gap to the one-process gradient
//   rlhf_dist_tool die           rank 1 exits (status 3) after joining; the others all-reduce
//                                and must fail with an Error, not hang
#include <cstdio>
#include <iostream>
#include <string>

#include "core/error.h"
#include "dist/gradient_reducer.h"
#include "dist/process_group.h"

int main(int argc, char** argv) try {
  const std::string mode = argc > 1 ? argv[1] : "";
  auto& pg = rlhf::default_process_group();
  const double r = pg.rank();
  if (mode == "collectives") {
    auto a = torch::full({3}, r + 1), b = torch::arange(4, torch::kFloat32) * (r + 1), c = torch::full({2}, r + 1);
    pg.allreduce_mean({a, b});
    pg.allreduce_sum({c});
    const auto s = pg.allreduce_sum(std::vector<double>{r, 1.0});
    const auto mx = pg.allreduce_max(std::vector<double>{r, 5.0 - r});
    auto d = torch::full({2}, r + 10);
    pg.broadcast({d}, 0);
    // Every rank checks its own copy: all must hold the same values.
    std::printf("rank %d/%d mean %g %g sum %g scalars %g %g max %g %g broadcast %g\n", pg.rank(), pg.world(),
                a[0].item<double>(), b[3].item<double>(), c[0].item<double>(), s[0], s[1], mx[0], mx[1],
                d[0].item<double>());
    pg.barrier();
    return 0;
  }
  if (mode == "buckets") {
    // Parameters, in registration order: `extra` scales the input on rank 0 only (its gradient is
    // final last, and rank 1 never has one), two linear layers, and `unused` (no gradient anywhere).
    torch::manual_seed(1);
    auto unused = torch::randn({3}).requires_grad_(), extra = torch::randn({4}).requires_grad_();
    auto w1 = torch::randn({5, 4}).requires_grad_(), b1 = torch::randn({5}).requires_grad_();
    auto w2 = torch::randn({2, 5}).requires_grad_(), b2 = torch::randn({2}).requires_grad_();
    const std::vector<torch::Tensor> params{unused, extra, w1, b1, w2, b2};
    auto loss = [&](int rank, int micro) {
      auto x = torch::arange(8, torch::kFloat32).reshape({2, 4}) * (rank + 1) + micro;
      if (rank == 0) x = x * extra;
      return torch::tanh(torch::nn::functional::linear(torch::tanh(torch::nn::functional::linear(x, w1, b1)), w2, b2))
          .pow(2)
          .sum();
    };
    // The one-process gradient: both ranks' losses, both micro-batches.
    for (int rk = 0; rk < pg.world(); ++rk)
      for (int mc = 0; mc < 2; ++mc) loss(rk, mc).backward();
    std::vector<torch::Tensor> expected;
    for (auto& p : params) {
      expected.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
      p.mutable_grad() = torch::Tensor();
    }
    rlhf::GradientReducer reducer(pg, params, /*bucket_bytes=*/1);
    loss(pg.rank(), 0).backward();
    reducer.arm();
    loss(pg.rank(), 1).backward();
    std::vector<double> figures{r + 1};
    reducer.finish(figures);
    double gap = 0;
    bool undefined_match = true;
    for (size_t i = 0; i < params.size(); ++i) {
      undefined_match &= params[i].grad().defined() == expected[i].defined();
      if (expected[i].defined() && params[i].grad().defined())
        gap = std::max(gap, (params[i].grad() - expected[i]).abs().max().item<double>());
    }
    std::printf("rank %d: started %lld of %lld in backward, figures %g, undefined match %d, gap %.3g\n", pg.rank(),
                static_cast<long long>(reducer.started_in_backward()), static_cast<long long>(reducer.buckets()), figures[0],
                int(undefined_match), gap);
    return 0;
  }
  if (mode == "die") {
    if (pg.rank() == 1) std::_Exit(3);
    auto a = torch::ones({8});
    pg.allreduce_mean({a});
    std::printf("rank %d: the all-reduce returned though rank 1 was gone\n", pg.rank());
    return 0;
  }
  std::cerr << "usage: rlhf_dist_tool collectives|buckets|die\n";
  return 2;
} catch (const std::exception& e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}
