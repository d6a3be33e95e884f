// side_by_side (train/side_by_side.h): both jobs run, on two threads with half the intra-op
// threads each, with the caller's grad mode; errors come back; the team size is restored;
// gradients equal those of running the two one after the other.
#include <gtest/gtest.h>

#include <ATen/Parallel.h>

#include <atomic>
#include <thread>

#include "core/error.h"
#include "train/side_by_side.h"

using namespace rlhf;

// Sets ATen's intra-op thread count for a scope (side_by_side takes its OpenMP-team path at
// 2 threads and its helper-thread path above).
struct IntraOpThreads {
  int before = at::get_num_threads();
  explicit IntraOpThreads(int n) { at::set_num_threads(n); }
  ~IntraOpThreads() { at::set_num_threads(before); }
};

class SideBySideThreads : public ::testing::TestWithParam<int> {};

TEST_P(SideBySideThreads, RunsBothOnHalfTheThreadsWithTheCallersGradMode) {
  const IntraOpThreads threads(GetParam());
  const int n = at::get_num_threads();
  int threads_a = -1, threads_b = -1;
  bool grad_a = true, grad_b = true;
  std::thread::id id_a, id_b;
  {
    torch::NoGradGuard no_grad;
    side_by_side(
        [&] {
          threads_a = at::get_num_threads(), grad_a = torch::GradMode::is_enabled(), id_a = std::this_thread::get_id();
        },
        [&] {
          threads_b = at::get_num_threads(), grad_b = torch::GradMode::is_enabled(), id_b = std::this_thread::get_id();
        });
  }
  EXPECT_FALSE(grad_a);
  EXPECT_FALSE(grad_b);
  EXPECT_EQ(id_b, std::this_thread::get_id());
  if (n >= 2) {
    EXPECT_EQ(threads_a, n / 2);
    EXPECT_EQ(threads_b, n - n / 2);
    EXPECT_NE(id_a, id_b);
  }
  EXPECT_EQ(at::get_num_threads(), n) << "the caller's team size is restored";
}

TEST_P(SideBySideThreads, RethrowsAfterBothFinish) {
  const IntraOpThreads threads(GetParam());
  std::atomic<bool> b_done{false};
  EXPECT_THROW(side_by_side([] { throw Error("a failed"); }, [&] { b_done = true; }), Error);
  EXPECT_TRUE(b_done);
  EXPECT_THROW(side_by_side([] {}, [] { throw Error("b failed"); }), Error);
}

TEST_P(SideBySideThreads, GradientsEqualOneAfterTheOther) {
  const IntraOpThreads threads(GetParam());
  torch::manual_seed(0);
  torch::nn::Linear a(64, 32), b(64, 32);
  auto x = torch::randn({128, 64});
  auto grads = [&](bool together) {
    a->zero_grad(), b->zero_grad();
    auto job_a = [&] { a(x).tanh().sum().backward(); };
    auto job_b = [&] { b(x).square().mean().backward(); };
    if (together) side_by_side(job_a, job_b);
    else job_a(), job_b();
    return std::make_pair(a->weight.grad().clone(), b->weight.grad().clone());
  };
  auto [sa, sb] = grads(true);
  auto [qa, qb] = grads(false);
  EXPECT_TRUE(torch::allclose(sa, qa, 1e-6, 1e-7));
  EXPECT_TRUE(torch::allclose(sb, qb, 1e-6, 1e-7));
  EXPECT_GT(sa.abs().sum().item<double>(), 0.0);
}

TEST(SideBySide, NestedCallsRunInTurn) {
  const IntraOpThreads threads(2);
  std::atomic<int> ran{0};
  side_by_side([&] { side_by_side([&] { ++ran; }, [&] { ++ran; }); }, [&] { ++ran; });
  EXPECT_EQ(ran, 3);
}

// 1: one after the other; 2: the caller's OpenMP team; 3 and 4: a helper thread.
INSTANTIATE_TEST_SUITE_P(IntraOp, SideBySideThreads, ::testing::Values(1, 2, 3, 4));
