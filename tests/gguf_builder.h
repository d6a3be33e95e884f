// Writes small GGUF files byte by byte, so tests can make any type, version or corruption.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace rlhf::test {

struct GgufBuilder {
  uint32_t version = 3;
  uint64_t n_kv = 0;
  std::string kv;
  struct Tensor {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type;
    std::string data;
    std::optional<uint64_t> offset = {};  // default: after the previous tensor's data
  };
  std::vector<Tensor> tensors;

  template <typename T>
  static void put(std::string& b, T v) { b.append(reinterpret_cast<const char*>(&v), sizeof(T)); }
  static void put_str(std::string& b, const std::string& s) { put<uint64_t>(b, s.size()); b += s; }
  void key(const std::string& k, uint32_t type) { put_str(kv, k); put<uint32_t>(kv, type); ++n_kv; }
  void u32(const std::string& k, uint32_t v) { key(k, 4); put(kv, v); }
  void f32(const std::string& k, float v) { key(k, 6); put(kv, v); }
  void str(const std::string& k, const std::string& v) { key(k, 8); put_str(kv, v); }
  void f32_tensor(const std::string& name, std::vector<uint64_t> ne, const torch::Tensor& t) {
    torch::Tensor c = t.to(torch::kFloat32).contiguous();
    tensors.push_back({name, ne, 0, std::string(static_cast<const char*>(c.data_ptr()), c.numel() * 4)});
  }
  std::string build() const {
    std::string b = "GGUF";
    put(b, version);
    put<uint64_t>(b, tensors.size());
    put<uint64_t>(b, n_kv);
    b += kv;
    uint64_t offset = 0;
    for (const auto& t : tensors) {
      put_str(b, t.name);
      put<uint32_t>(b, t.ne.size());
      for (uint64_t n : t.ne) put(b, n);
      put(b, t.type);
      put(b, t.offset.value_or(offset));
      offset += (t.data.size() + 31) / 32 * 32;
    }
    b.resize((b.size() + 31) / 32 * 32, '\0');
    for (const auto& t : tensors) {
      b += t.data;
      b.resize((b.size() + 31) / 32 * 32, '\0');
    }
    return b;
  }
};

}  // namespace rlhf::test
