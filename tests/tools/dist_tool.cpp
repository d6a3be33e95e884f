// Test helper for tests/dist: one rank of a small collective program, run as several
// processes (by `rlhf launch` or the test itself).
//   rlhf_dist_tool collectives   all-reduce (mean, sum, max, scalars) and broadcast of rank-dependent
//                                values; rank 0 prints what every rank must agree on
//   rlhf_dist_tool die           rank 1 exits (status 3) after joining; the others all-reduce
//                                and must fail with an Error, not hang
#include <cstdio>
#include <iostream>
#include <string>

#include "core/error.h"
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
  if (mode == "die") {
    if (pg.rank() == 1) std::_Exit(3);
    auto a = torch::ones({8});
    pg.allreduce_mean({a});
    std::printf("rank %d: the all-reduce returned though rank 1 was gone\n", pg.rank());
    return 0;
  }
  std::cerr << "usage: rlhf_dist_tool collectives|die\n";
  return 2;
} catch (const std::exception& e) {
  std::cerr << "error: " << e.what() << "\n";
  return 1;
}
