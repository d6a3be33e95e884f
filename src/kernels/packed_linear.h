// Weights packed for inference, and the matrix products that read them: float32, bf16 (half
// the bytes) or Q8_0 (llama.cpp's blocks, ~1.06 bytes a value). Decoding a token reads every
// weight once, so its speed is the memory bandwidth divided by the bytes of the weights; these
// kernels stream each weight once per call and widen it to float32 in registers.
// Dimension letters: N output features (rows of the weight), K input features.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

namespace rlhf {

enum class WeightFormat { F32, BF16, Q8_0 };

// "f32" | "float32", "bf16" | "bfloat16", "q8_0"; Error for anything else.
WeightFormat parse_weight_format(const std::string& name);
const char* weight_format_name(WeightFormat format);  // "f32", "bf16", "q8_0"

// Q8_0 as llama.cpp stores it: 32 values share one fp16 scale d; value = d * q, q int8.
constexpr int64_t kQ8_0Block = 32;        // values per block
constexpr int64_t kQ8_0BlockBytes = 34;   // fp16 scale, then 32 int8

// An (N, K) weight matrix in one of the formats.
struct PackedWeight {
  WeightFormat format = WeightFormat::F32;
  int64_t rows = 0, cols = 0;  // N, K
  // F32: (N, K) float32; BF16: (N, K) bfloat16; Q8_0: (N, ceil(K / 32) * 34) uint8, each row
  // its blocks in llama.cpp's layout (a partial last block padded with zeros). Contiguous.
  torch::Tensor data;

  bool defined() const { return data.defined(); }
  int64_t bytes() const { return data.defined() ? static_cast<int64_t>(data.nbytes()) : 0; }
};

// (N, K) floating-point weight -> packed. Q8_0 rounds as llama.cpp's quantize_row_q8_0 does
// (d = max|w| / 127 per block, q = round(w / d), d stored as fp16).
PackedWeight pack(const torch::Tensor& weight, WeightFormat format);
// Q8_0 blocks as read from a file: (N, K / 32 * 34) uint8 (copied unless already contiguous uint8).
PackedWeight q8_0_from_blocks(const torch::Tensor& blocks, int64_t rows, int64_t cols);
// Stacks the rows of weights with equal K (q, k, v into one qkv matrix); mixed formats are
// repacked in the first one's format.
PackedWeight concat_rows(const std::vector<PackedWeight>& parts);

torch::Tensor dequantize(const PackedWeight& w);  // (N, K) float32
// Embedding lookup: index (...) int64 -> (..., K) float32, the rows dequantized.
torch::Tensor dequantize_rows(const PackedWeight& w, const torch::Tensor& index);

// x (..., K) float32 -> x @ W^T + bias (..., N) float32 (bias (N) or undefined). Up to
// kPackedLinearOwnRows rows (decoding a batch): one pass over W, its rows split across
// threads, our kernels (AVX-512). More rows, or without AVX-512: W in panels, each widened
// once to float32 and multiplied against all rows by sgemm while it is in cache. No autograd.
torch::Tensor packed_linear(const torch::Tensor& x, const PackedWeight& w, const torch::Tensor& bias = {});
// Rows of x up to which packed_linear runs its own AVX-512 kernels on bf16/Q8_0 weights, and
// on float32 ones. bench/bench_linear.cpp: on float32 weights they are 1.1-1.75x MKL's sgemm
// at 16 rows, but sgemm catches up by 64 (0.75-0.97x), so float32 (packed, and unpacked
// inference through transformer.cpp) goes to sgemm above 32 rows.
constexpr int64_t kPackedLinearOwnRows = 64;
constexpr int64_t kFloatLinearOwnRows = 32;

// The kernels are AVX-512 where the CPU has it, else portable C++; RLHF_PACKED=portable in
// the environment forces the portable ones. Tests switch with this (false: back to the CPU's).
void packed_kernels_force_portable(bool on);

}  // namespace rlhf
