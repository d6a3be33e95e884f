// c10d on loopback: collectives across real processes started by `rlhf launch`, the
// environment contract torchrun shares, and a dead rank turning into errors instead of hangs.
#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>

#include "core/error.h"
#include "dist/process_group.h"
#include "../test_util.h"

using namespace rlhf;

namespace {

const std::string kTool = RLHF_DIST_TOOL_PATH;

// Sets (or, with nullptr, unsets) an environment variable for the scope.
struct EnvVar {
  std::string name;
  std::optional<std::string> old;
  EnvVar(std::string n, const char* value) : name(std::move(n)) {
    if (const char* o = std::getenv(name.c_str())) old = o;
    value ? ::setenv(name.c_str(), value, 1) : ::unsetenv(name.c_str());
  }
  ~EnvVar() { old ? ::setenv(name.c_str(), old->c_str(), 1) : ::unsetenv(name.c_str()); }
};

}  // namespace

TEST(Launch, CollectivesAgreeAcrossThreeProcesses) {
  const auto r = test::run_cli("launch --nproc 3 -- " + kTool + " collectives");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Ranks hold 1, 2, 3: means 2 and 3 * 2 = 6, sum 6, scalars 0+1+2 and 3, maxima 2 and 5, rank 0's 10.
  for (int rank = 0; rank < 3; ++rank)
    EXPECT_NE(r.output.find("rank " + std::to_string(rank) + "/3 mean 2 6 sum 6 scalars 3 3 max 2 5 broadcast 10"),
              std::string::npos)
        << r.output;
}

TEST(GradientBuckets, SumOverRanksWhileTheBackwardPassRuns) {
  // One bucket per parameter, sent in reverse registration order, each as soon as its gradient
  // (accumulated over 2 micro-batches) is final. Rank 0: all but `unused` start inside the
  // backward pass (5 of 6); rank 1 never has `extra`'s, so `extra` and `unused` wait for
  // finish() (4 of 6). Every rank ends with the one-process gradient; `unused` keeps none.
  const auto r = test::run_cli("launch --nproc 2 -- " + kTool + " buckets");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const std::string expect : {"rank 0: started 5 of 6 in backward, figures 3, undefined match 1, gap ",
                                   "rank 1: started 4 of 6 in backward, figures 3, undefined match 1, gap "}) {
    const auto at = r.output.find(expect);
    ASSERT_NE(at, std::string::npos) << r.output;
    EXPECT_LT(std::stod(r.output.substr(at + expect.size())), 1e-5) << r.output;
  }
}

TEST(Launch, ADeadRankStopsTheRunWithItsStatus) {
  // Rank 1 exits with 3: launch reports it, stops the others and exits with 3, well within
  // the collective timeout (the test would otherwise hit CTest's).
  const auto r = test::run_cli("launch --nproc 2 -- " + kTool + " die");
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("rank 1 exited with status 3"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("returned though rank 1 was gone"), std::string::npos) << r.output;
}

TEST(Launch, SurvivorsOfADeadRankFailWithAClearError) {
  // Without launch (as under another scheduler): rank 0's all-reduce must fail with an error
  // naming its rank once rank 1 is gone.
  const std::string env = "MASTER_ADDR=127.0.0.1 MASTER_PORT=29611 WORLD_SIZE=2 ";
  const std::string cmd = "(" + env + "RANK=0 " + kTool + " die; echo \"rank0 status $?\") & " + env + "RANK=1 " +
                          kTool + " die; wait";
  FILE* p = ::popen(("bash -c '" + cmd + "' 2>&1").c_str(), "r");
  std::string out;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), p)) > 0;) out.append(buf, n);
  ::pclose(p);
  EXPECT_NE(out.find("rank 0 of 2: all-reduce failed"), std::string::npos) << out;
  EXPECT_NE(out.find("rank0 status 1"), std::string::npos) << out;
}

TEST(DistEnv, ReadsTorchrunVariablesAndRefusesBadOnes) {
  {
    EnvVar a("RANK", "1"), b("WORLD_SIZE", "4"), c("LOCAL_RANK", "1"), d("MASTER_ADDR", "10.0.0.2"),
        e("MASTER_PORT", "1234");
    const auto env = dist_env_from_environment();
    EXPECT_EQ(env.rank, 1);
    EXPECT_EQ(env.world, 4);
    EXPECT_EQ(env.local_rank, 1);
    EXPECT_EQ(env.master_addr, "10.0.0.2");
    EXPECT_EQ(env.master_port, 1234);
  }
  {
    EnvVar a("RANK", nullptr), b("WORLD_SIZE", nullptr);
    EXPECT_EQ(dist_env_from_environment().world, 1);
    ProcessGroup single(dist_env_from_environment());
    auto t = torch::full({2}, 5.0);
    single.allreduce_mean({t});  // one process: nothing to do, nothing changes
    EXPECT_EQ(t[0].item<double>(), 5.0);
  }
  auto error_of = [] {
    try {
      dist_env_from_environment();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  {
    EnvVar a("RANK", "4"), b("WORLD_SIZE", "4");
    EXPECT_NE(error_of().find("RANK='4'"), std::string::npos);
  }
  {
    EnvVar a("RANK", "0"), b("WORLD_SIZE", nullptr);
    EXPECT_NE(error_of().find("set together"), std::string::npos);
  }
  {
    EnvVar a("RANK", "0"), b("WORLD_SIZE", "2"), c("MASTER_PORT", "http");
    EXPECT_NE(error_of().find("MASTER_PORT"), std::string::npos);
  }
}
