// Reading the reference-number fixtures (tests/fixtures/*.json, written by scripts/gen_*_fixtures.py
// from the Python peers' own code) and comparing tensors against them.
#pragma once
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace rlhf::test {

// tests/fixtures/<name>; a missing file fails the test with the command that regenerates it.
inline nlohmann::json load_fixture(const std::string& name, const std::string& generator) {
  std::ifstream f(std::string(RLHF_SOURCE_DIR) + "/tests/fixtures/" + name);
  EXPECT_TRUE(f.good()) << "missing fixture " << name << "; regenerate with .venv/bin/python " << generator;
  return f.good() ? nlohmann::json::parse(f) : nlohmann::json::object();
}

// A fixture list as a tensor of the given shape (float32, or e.g. int64 for ids).
inline torch::Tensor tensor(const nlohmann::json& values, std::vector<int64_t> shape,
                            torch::ScalarType dtype = torch::kFloat32) {
  std::vector<double> v = values.get<std::vector<double>>();
  return torch::tensor(v, torch::kFloat64).reshape(shape).to(dtype);
}

// Element by element, so a failure names the index; `want` is a list or a single number.
inline void expect_near(const torch::Tensor& got, const nlohmann::json& want, const std::string& what,
                        double tol = 1e-5) {
  auto w = want.is_array() ? tensor(want, {-1}, torch::kFloat64) : torch::tensor({want.get<double>()}, torch::kFloat64);
  auto g = got.detach().to(torch::kCPU, torch::kFloat64).reshape({-1});
  ASSERT_EQ(g.numel(), w.numel()) << what;
  for (int64_t i = 0; i < g.numel(); ++i)
    EXPECT_NEAR(g[i].item<double>(), w[i].item<double>(), tol) << what << " [" << i << "]";
}

}  // namespace rlhf::test
