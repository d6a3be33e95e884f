// The matrix products of batched decoding: GFLOP/s of packed_linear (f32, bf16, q8_0 weights)
// against at::linear (MKL's sgemm, what PyTorch runs) on the projection shapes of SmolLM2-135M
// and Qwen2.5-0.5B, for 1, 4, 16 and 64 rows of x, each also as a share of the sgemm peak (a
// large square at::mm timed in the same run). One JSON line per shape and row count, after
// one line with the peak.
//   bench_linear [ROWS...]   (default 1 4 16 64)
// Each figure is the fastest of 3 timed batches of calls (each batch >= 20 ms; of 10 for a
// step). The products of one shape are timed with the weight hot in cache; the last lines
// ("step") time all the products of a whole SmolLM2-135M decoding step (30 layers and the LM head, 538 MB as float32,
// twice the L3), so that every weight comes from memory as in decoding, against the memory
// read bandwidth measured in the same run (sum over 1 GiB) and the roofline of that many rows:
// min(sgemm peak, 2 x rows FLOP per weight x bandwidth / bytes per weight).
#include <algorithm>
#include <chrono>
#include <iostream>

#include <nlohmann/json.hpp>

#include "kernels/packed_linear.h"

namespace {

struct Shape {
  const char* model;
  const char* name;
  int64_t N, K;  // output features, input features
};

// The fused projections the transformer runs (qkv_proj, gate_up_proj) and the LM head.
const Shape kShapes[] = {
    {"SmolLM2-135M", "qkv", 960, 576},        {"SmolLM2-135M", "o", 576, 576},
    {"SmolLM2-135M", "gate_up", 3072, 576},   {"SmolLM2-135M", "down", 576, 1536},
    {"SmolLM2-135M", "lm_head", 49152, 576},  {"Qwen2.5-0.5B", "qkv", 1152, 896},
    {"Qwen2.5-0.5B", "o", 896, 896},          {"Qwen2.5-0.5B", "gate_up", 9728, 896},
    {"Qwen2.5-0.5B", "down", 896, 4864},      {"Qwen2.5-0.5B", "lm_head", 151936, 896},
};

// Seconds a call of f takes: the fastest of `batches` batches, each long enough to time.
template <typename F>
double seconds_per_call(F f, int batches = 3) {
  using clock = std::chrono::steady_clock;
  f();  // warm-up: caches, OpenMP's threads, MKL's buffers
  double best = 1e30;
  for (int batch = 0; batch < batches; ++batch) {
    int64_t calls = 0;
    const auto t0 = clock::now();
    double s = 0;
    do {
      f();
      ++calls;
      s = std::chrono::duration<double>(clock::now() - t0).count();
    } while (s < 0.02);
    best = std::min(best, s / calls);
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> rows;
  for (int a = 1; a < argc; ++a) rows.push_back(std::stol(argv[a]));
  if (rows.empty()) rows = {1, 4, 16, 32, 64};
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;

  const int64_t S = 2048;
  const auto a = torch::randn({S, S}), b = torch::randn({S, S});
  const double peak = 2.0 * S * S * S / seconds_per_call([&] { at::mm(a, b); }) / 1e9;
  std::cout << nlohmann::json{{"sgemm_peak_gflops", peak}, {"square", S}, {"threads", at::get_num_threads()}}.dump()
            << std::endl;

  const auto big = torch::ones({int64_t(1) << 28});  // 1 GiB
  const double bandwidth = big.nbytes() / seconds_per_call([&] { big.sum(); }) / 1e9;
  std::cout << nlohmann::json{{"read_gb_per_s", bandwidth}}.dump() << std::endl;

  const std::vector<rlhf::WeightFormat> formats = {rlhf::WeightFormat::F32, rlhf::WeightFormat::BF16,
                                                   rlhf::WeightFormat::Q8_0};
  for (const Shape& shape : kShapes) {
    const auto w = torch::randn({shape.N, shape.K}) * 0.05;
    std::vector<rlhf::PackedWeight> packed;
    for (auto f : formats) packed.push_back(rlhf::pack(w, f));
    for (int64_t M : rows) {
      const auto x = torch::randn({M, shape.K});
      const double flop = 2.0 * M * shape.N * shape.K;
      const double aten = flop / seconds_per_call([&] { at::linear(x, w); }) / 1e9;
      nlohmann::json gflops{{"aten", aten}}, vs_aten, peak_share{{"aten", aten / peak}};
      for (const auto& p : packed) {
        const char* name = rlhf::weight_format_name(p.format);
        const double g = flop / seconds_per_call([&] { rlhf::packed_linear(x, p); }) / 1e9;
        gflops[name] = g;
        vs_aten[name] = g / aten;
        peak_share[name] = g / peak;
      }
      std::cout << nlohmann::json{{"model", shape.model}, {"proj", shape.name}, {"N", shape.N},
                                  {"K", shape.K},         {"rows", M},         {"gflops", gflops},
                                  {"vs_aten", vs_aten},   {"peak_share", peak_share}}
                       .dump()
                << std::endl;
    }
  }
  // A whole decoding step of the SmolLM2-135M shape, weights cold.
  const int64_t layers = 30;
  std::vector<std::pair<int64_t, int64_t>> step_shapes;  // (N, K) in the order a step runs them
  for (int64_t l = 0; l < layers; ++l)
    for (const Shape& sh : kShapes)
      if (std::string(sh.model) == "SmolLM2-135M" && std::string(sh.name) != "lm_head") step_shapes.emplace_back(sh.N, sh.K);
  step_shapes.emplace_back(49152, 576);
  for (auto f : formats) {
    std::vector<rlhf::PackedWeight> ws;
    int64_t bytes = 0, params = 0;
    for (auto [N, K] : step_shapes) {
      ws.push_back(rlhf::pack(torch::randn({N, K}) * 0.05, f));
      bytes += ws.back().bytes();
      params += N * K;
    }
    for (int64_t M : rows) {
      std::vector<torch::Tensor> xs;
      for (auto [N, K] : step_shapes) xs.push_back(torch::randn({M, K}));
      const double s = seconds_per_call([&] {
        for (size_t i = 0; i < ws.size(); ++i) rlhf::packed_linear(xs[i], ws[i]);
      }, 10);  // a step is one call of 8-120 ms: the fastest of 10
      const double gflops = 2.0 * M * params / s / 1e9;
      const double roofline = std::min(peak, 2.0 * M * params / bytes * bandwidth);
      std::cout << nlohmann::json{{"step", "SmolLM2-135M"},
                                  {"weights", rlhf::weight_format_name(f)},
                                  {"rows", M},
                                  {"ms", s * 1e3},
                                  {"gflops", gflops},
                                  {"weight_gb_per_s", bytes / s / 1e9},
                                  {"peak_share", gflops / peak},
                                  {"roofline_gflops", roofline},
                                  {"roofline_share", gflops / roofline}}
                       .dump()
                << std::endl;
    }
  }
}
