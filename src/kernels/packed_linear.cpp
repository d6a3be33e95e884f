// Packed weights (float32, bf16, Q8_0) and their matrix products. Each kernel comes twice: an
// AVX-512 version (functions carry their own target attribute and run only where the CPU
// has it, as in attention_kernel.cpp) and a portable one for every other CPU.
#include "kernels/packed_linear.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/error.h"

// GCC 12 warns inside its own AVX-512 reduce intrinsics (their _mm512_undefined_ps): a known
// false positive, not our code.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define RLHF_PACKED_AVX512 __attribute__((target("avx512f,avx512vl,fma,f16c")))

namespace rlhf {

WeightFormat parse_weight_format(const std::string& name) {
  if (name == "f32" || name == "float32") return WeightFormat::F32;
  if (name == "bf16" || name == "bfloat16") return WeightFormat::BF16;
  if (name == "q8_0" || name == "Q8_0") return WeightFormat::Q8_0;
  throw Error("unknown weight format '" + name + "' (expected f32, bf16 or q8_0)");
}

const char* weight_format_name(WeightFormat format) {
  switch (format) {
    case WeightFormat::F32: return "f32";
    case WeightFormat::BF16: return "bf16";
    case WeightFormat::Q8_0: return "q8_0";
  }
  return "?";
}

namespace {

// 0: not decided yet, 1: AVX-512, 2: portable.
std::atomic<int> g_kernels{0};

bool use_avx512() {
  int k = g_kernels.load(std::memory_order_relaxed);
  if (k == 0) {
    const char* e = std::getenv("RLHF_PACKED");
    const bool portable = (e && std::strcmp(e, "portable") == 0) || !__builtin_cpu_supports("avx512f") ||
                          !__builtin_cpu_supports("avx512vl") || !__builtin_cpu_supports("f16c");
    k = portable ? 2 : 1;
    g_kernels.store(k, std::memory_order_relaxed);
  }
  return k == 1;
}

int64_t q8_0_blocks(int64_t cols) { return (cols + kQ8_0Block - 1) / kQ8_0Block; }
// Columns as the kernels see them: Q8_0 rows are whole blocks.
int64_t padded_cols(const PackedWeight& w) {
  return w.format == WeightFormat::Q8_0 ? q8_0_blocks(w.cols) * kQ8_0Block : w.cols;
}

float fp16_to_float(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return static_cast<float>(c10::Half(bits, c10::Half::from_bits()));
}

float bf16_to_float(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// ---- widening one row to float32 (padded_cols values) ---------------------------------

void widen_row_portable(const PackedWeight& w, int64_t n, float* out) {
  const int64_t K = w.cols;
  switch (w.format) {
    case WeightFormat::F32:
      std::memcpy(out, w.data.data_ptr<float>() + n * K, K * sizeof(float));
      return;
    case WeightFormat::BF16: {
      const auto* r = reinterpret_cast<const uint16_t*>(w.data.data_ptr()) + n * K;
      for (int64_t k = 0; k < K; ++k) out[k] = bf16_to_float(r[k]);
      return;
    }
    case WeightFormat::Q8_0: {
      const int64_t nb = q8_0_blocks(K);
      const uint8_t* r = w.data.data_ptr<uint8_t>() + n * nb * kQ8_0BlockBytes;
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* blk = r + b * kQ8_0BlockBytes;
        const float d = fp16_to_float(blk);
        const auto* q = reinterpret_cast<const int8_t*>(blk + 2);
        for (int64_t k = 0; k < kQ8_0Block; ++k) out[b * kQ8_0Block + k] = d * static_cast<float>(q[k]);
      }
      return;
    }
  }
}

RLHF_PACKED_AVX512 inline float fp16_scale(const uint8_t* p) {
  uint16_t bits;
  std::memcpy(&bits, p, 2);
  return _cvtsh_ss(bits);
}

RLHF_PACKED_AVX512 inline __m512 load_bf16x16(const uint16_t* p) {
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

RLHF_PACKED_AVX512 inline __m512 load_q8x16(const uint8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}

// Columns [k0, k0 + len) of row n (Q8_0: k0 and len whole blocks, len up to padded_cols).
RLHF_PACKED_AVX512 void widen_range_avx512(const PackedWeight& w, int64_t n, int64_t k0, int64_t len, float* out) {
  const int64_t K = w.cols;
  if (w.format == WeightFormat::BF16) {
    const auto* r = reinterpret_cast<const uint16_t*>(w.data.data_ptr()) + n * K + k0;
    int64_t k = 0;
    for (; k + 16 <= len; k += 16) _mm512_storeu_ps(out + k, load_bf16x16(r + k));
    for (; k < len; ++k) out[k] = bf16_to_float(r[k]);
  } else if (w.format == WeightFormat::Q8_0) {
    const uint8_t* r = w.data.data_ptr<uint8_t>() + (n * q8_0_blocks(K) + k0 / kQ8_0Block) * kQ8_0BlockBytes;
    for (int64_t b = 0; b < len / kQ8_0Block; ++b) {
      const uint8_t* blk = r + b * kQ8_0BlockBytes;
      const __m512 d = _mm512_set1_ps(fp16_scale(blk));
      _mm512_storeu_ps(out + b * 32, _mm512_mul_ps(d, load_q8x16(blk + 2)));
      _mm512_storeu_ps(out + b * 32 + 16, _mm512_mul_ps(d, load_q8x16(blk + 18)));
    }
  } else {
    std::memcpy(out, w.data.data_ptr<float>() + n * K + k0, len * sizeof(float));
  }
}

RLHF_PACKED_AVX512 void widen_row_avx512(const PackedWeight& w, int64_t n, float* out) {
  widen_range_avx512(w, n, 0, padded_cols(w), out);
}

void widen_row(const PackedWeight& w, int64_t n, float* out) {
  if (use_avx512()) widen_row_avx512(w, n, out);
  else widen_row_portable(w, n, out);
}

// ---- GEMV: few rows of x, each weight row read once for all of them --------------------
// The weights stream through once: software prefetch this far ahead of the loads (the
// hardware prefetcher alone left the loop waiting on memory, perf showed).
constexpr int64_t kPrefetchBytes = 2048;
// Y[m, n] = sum_k X[m, k] W[n, k] for n in [n0, n1); X (M, Kp) rows ldx apart, Y rows ldy apart.

void gemv_portable(const PackedWeight& w, int64_t M, const float* X, int64_t ldx, float* Y, int64_t ldy, int64_t n0,
                   int64_t n1) {
  const int64_t Kp = padded_cols(w);
  std::vector<float> row(Kp);
  for (int64_t n = n0; n < n1; ++n) {
    widen_row_portable(w, n, row.data());
    for (int64_t m = 0; m < M; ++m) {
      const float* x = X + m * ldx;
      float s = 0;
      for (int64_t k = 0; k < Kp; ++k) s += row[k] * x[k];
      Y[m * ldy + n] = s;
    }
  }
}

template <int M>
RLHF_PACKED_AVX512 void gemv_q8_0_avx512(const PackedWeight& w, const float* X, int64_t ldx, float* Y, int64_t ldy,
                                         int64_t n0, int64_t n1) {
  const int64_t nb = q8_0_blocks(w.cols), row_bytes = nb * kQ8_0BlockBytes;
  const uint8_t* W = w.data.data_ptr<uint8_t>();
  for (int64_t n = n0; n < n1; ++n) {
    const uint8_t* r = W + n * row_bytes;
    __m512 acc[M];
    for (int m = 0; m < M; ++m) acc[m] = _mm512_setzero_ps();
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = r + b * kQ8_0BlockBytes;
      _mm_prefetch(reinterpret_cast<const char*>(blk) + kPrefetchBytes, _MM_HINT_T0);
      const __m512 d = _mm512_set1_ps(fp16_scale(blk));
      const __m512 w0 = load_q8x16(blk + 2), w1 = load_q8x16(blk + 18);
      for (int m = 0; m < M; ++m) {  // acc += d * (q . x) over the block
        const float* x = X + m * ldx + b * 32;
        const __m512 s = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + 16), _mm512_mul_ps(w0, _mm512_loadu_ps(x)));
        acc[m] = _mm512_fmadd_ps(d, s, acc[m]);
      }
    }
    for (int m = 0; m < M; ++m) Y[m * ldy + n] = _mm512_reduce_add_ps(acc[m]);
  }
}

// F32 and BF16: 32 values a step in two accumulators per row of x (FMA latency), scalar tail.
template <int M, bool kBf16>
RLHF_PACKED_AVX512 void gemv_dense_avx512(const PackedWeight& w, const float* X, int64_t ldx, float* Y, int64_t ldy,
                                          int64_t n0, int64_t n1) {
  const int64_t K = w.cols;
  const auto* W16 = reinterpret_cast<const uint16_t*>(w.data.data_ptr());
  const auto* W32 = reinterpret_cast<const float*>(w.data.data_ptr());
  for (int64_t n = n0; n < n1; ++n) {
    __m512 a0[M], a1[M];
    for (int m = 0; m < M; ++m) a0[m] = a1[m] = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
      __m512 w0, w1;
      _mm_prefetch(reinterpret_cast<const char*>(kBf16 ? static_cast<const void*>(W16 + n * K + k)
                                                       : static_cast<const void*>(W32 + n * K + k)) + kPrefetchBytes,
                   _MM_HINT_T0);
      if constexpr (kBf16) {
        w0 = load_bf16x16(W16 + n * K + k);
        w1 = load_bf16x16(W16 + n * K + k + 16);
      } else {
        w0 = _mm512_loadu_ps(W32 + n * K + k);
        w1 = _mm512_loadu_ps(W32 + n * K + k + 16);
      }
      for (int m = 0; m < M; ++m) {
        a0[m] = _mm512_fmadd_ps(w0, _mm512_loadu_ps(X + m * ldx + k), a0[m]);
        a1[m] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(X + m * ldx + k + 16), a1[m]);
      }
    }
    for (int m = 0; m < M; ++m) {
      float s = _mm512_reduce_add_ps(_mm512_add_ps(a0[m], a1[m]));
      for (int64_t j = k; j < K; ++j) s += (kBf16 ? bf16_to_float(W16[n * K + j]) : W32[n * K + j]) * X[m * ldx + j];
      Y[m * ldy + n] = s;
    }
  }
}

template <int M>
void gemv_avx512(const PackedWeight& w, const float* X, int64_t ldx, float* Y, int64_t ldy, int64_t n0, int64_t n1) {
  switch (w.format) {
    case WeightFormat::Q8_0: return gemv_q8_0_avx512<M>(w, X, ldx, Y, ldy, n0, n1);
    case WeightFormat::BF16: return gemv_dense_avx512<M, true>(w, X, ldx, Y, ldy, n0, n1);
    case WeightFormat::F32: return gemv_dense_avx512<M, false>(w, X, ldx, Y, ldy, n0, n1);
  }
}

constexpr int64_t kMaxGemvRows = 4;  // more rows of x: panels (below)

void gemv(const PackedWeight& w, int64_t M, const float* X, int64_t ldx, float* Y, int64_t ldy) {
  const int64_t N = w.rows;
  const bool avx = use_avx512();
  // Chunks of rows big enough that a thread's share streams (and OpenMP's start-up is paid once).
  at::parallel_for(0, N, 32, [&](int64_t n0, int64_t n1) {
    if (!avx) return gemv_portable(w, M, X, ldx, Y, ldy, n0, n1);
    switch (M) {
      case 1: return gemv_avx512<1>(w, X, ldx, Y, ldy, n0, n1);
      case 2: return gemv_avx512<2>(w, X, ldx, Y, ldy, n0, n1);
      case 3: return gemv_avx512<3>(w, X, ldx, Y, ldy, n0, n1);
      default: return gemv_avx512<4>(w, X, ldx, Y, ldy, n0, n1);
    }
  });
}

// ---- GEMM: 5 to kPackedLinearOwnRows rows of x, blocked in registers -------------------
// Y = X W^T with W read as it is stored, (N, K) row-major: a block of 4 weight rows by up to
// 6 rows of x keeps its 24 dot products in zmm accumulators (16 partial sums each) over K,
// so each 16-float step loads 4 + 6 vectors for 24 FMAs, and the 24 sums are reduced once at
// the end. The weight block stays in L1 while every chunk of x rows passes over it, so each
// weight row is read from memory once per call. MKL's sgemm on this layout (x @ W^T) at 16
// rows ran at a third of its peak on a 2-core AVX-512 Xeon.
constexpr int kGemmWRows = 4;
constexpr int kGemmXRows = 6;  // 24 accumulators + 4 weight vectors + 1 of x: 29 of 32 zmm
// K in chunks of at most this many columns (a multiple of the Q8_0 block) keep a block of 4
// weight rows (16 KiB as float32) in L1 next to the x rows' slices.
constexpr int64_t kGemmMaxKc = 1024;

// The sums of 16 accumulators: a[i][Qq] holds weight row i against x row Qq. Lane q (128 bits)
// of the result holds x row q's 4 sums, element i weight row i: the transposition Y needs,
// done on the way: 45 shuffles and adds for the 16 sums, where 16 horizontal reductions
// would take 128 and still leave the sums to gather.
RLHF_PACKED_AVX512 __attribute__((always_inline)) inline __m512 lanes_of_four(__m512 p0, __m512 p1, __m512 p2, __m512 p3) {
  // 512 -> 256 -> 128 bits: lane q ends up holding p_q's 4 partial sums.
  const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(p0, p1, 0x44), _mm512_shuffle_f32x4(p0, p1, 0xEE));
  const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(p2, p3, 0x44), _mm512_shuffle_f32x4(p2, p3, 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
}

template <int R, int Q0, int Q1, int Q2, int Q3>
RLHF_PACKED_AVX512 __attribute__((always_inline)) inline __m512 sums_4x4(const __m512 (&a)[kGemmWRows][R]) {
  const __m512 t0 = lanes_of_four(a[0][Q0], a[0][Q1], a[0][Q2], a[0][Q3]);
  const __m512 t1 = lanes_of_four(a[1][Q0], a[1][Q1], a[1][Q2], a[1][Q3]);
  const __m512 t2 = lanes_of_four(a[2][Q0], a[2][Q1], a[2][Q2], a[2][Q3]);
  const __m512 t3 = lanes_of_four(a[3][Q0], a[3][Q1], a[3][Q2], a[3][Q3]);
  // Within each lane: 4 partials of 4 weight rows -> one sum per weight row.
  const __m512 u01 = _mm512_add_ps(_mm512_shuffle_ps(t0, t1, 0x44), _mm512_shuffle_ps(t0, t1, 0xEE));
  const __m512 u23 = _mm512_add_ps(_mm512_shuffle_ps(t2, t3, 0x44), _mm512_shuffle_ps(t2, t3, 0xEE));
  return _mm512_add_ps(_mm512_shuffle_ps(u01, u23, 0x88), _mm512_shuffle_ps(u01, u23, 0xDD));
}

// x rows [G, G + 4) of the block (the last one repeated where R ends first) into Y: `valid`
// weight rows (fewer at the end of N), added to Y when `accumulate` (K chunks after the first).
template <int R, int G>
RLHF_PACKED_AVX512 __attribute__((always_inline)) inline void store_sums(const __m512 (&acc)[kGemmWRows][R],
                                                                         float* Y, int64_t ldy, int valid,
                                                                         bool accumulate) {
  if constexpr (G < R) {
    // Past R the last x row is summed again and not stored.
    const __m512 s = sums_4x4<R, G, std::min(G + 1, R - 1), std::min(G + 2, R - 1), std::min(G + 3, R - 1)>(acc);
    const __m128 lane[4] = {_mm512_castps512_ps128(s), _mm512_extractf32x4_ps(s, 1), _mm512_extractf32x4_ps(s, 2),
                            _mm512_extractf32x4_ps(s, 3)};
    const __mmask8 mask = static_cast<__mmask8>((1u << valid) - 1);
    for (int i = 0; i < 4 && G + i < R; ++i) {
      float* y = Y + (G + i) * ldy;
      _mm_mask_storeu_ps(y, mask, accumulate ? _mm_add_ps(lane[i], _mm_maskz_loadu_ps(mask, y)) : lane[i]);
    }
    store_sums<R, G + 4>(acc, Y, ldy, valid, accumulate);
  }
}

RLHF_PACKED_AVX512 __attribute__((always_inline)) inline __m512 load16(const float* p, __mmask16 mask) {
  return mask == 0xFFFF ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(mask, p);
}

// One 16-column step of a block: 4 weight vectors, then each x row's vector against all 4.
// Masked loads only for the K tail: with a mask on every step the loop measured ~2/3 as fast.
template <int R>
RLHF_PACKED_AVX512 __attribute__((always_inline)) inline void gemm_step(__m512 (&acc)[kGemmWRows][R],
                                                                        const float* w0, const float* w1,
                                                                        const float* w2, const float* w3,
                                                                        const float* x, int64_t ldx,
                                                                        __mmask16 mask = 0xFFFF) {
  const __m512 a0 = load16(w0, mask), a1 = load16(w1, mask), a2 = load16(w2, mask), a3 = load16(w3, mask);
  for (int r = 0; r < R; ++r) {
    const __m512 v = load16(x + r * ldx, mask);
    acc[0][r] = _mm512_fmadd_ps(a0, v, acc[0][r]);
    acc[1][r] = _mm512_fmadd_ps(a1, v, acc[1][r]);
    acc[2][r] = _mm512_fmadd_ps(a2, v, acc[2][r]);
    acc[3][r] = _mm512_fmadd_ps(a3, v, acc[3][r]);
  }
}

// Weight rows, as stored, to bring into cache while a block computes: `rows` rows `ld` bytes
// apart from `p`, `step` bytes of each per 16 columns of the block (64 for float32, 32 for
// bf16, 17 for Q8_0).
struct Prefetch {
  const char* p = nullptr;
  int64_t ld = 0;
  int rows = 0, step = 0;
};

// The helpers above are always_inline: GCC keeps acc in registers only when every function
// that takes it by reference is inlined before it splits the array.
// Y[r, i] (+)= sum_k X[r, k] w_i[k] for R rows of x (ldx apart) and the 4 weight rows w_i
// (ldw apart; rows past `valid` point at real rows and are not stored), k in [0, K), while
// prefetching `next`, a cache line per row and 16 columns.
template <int R>
RLHF_PACKED_AVX512 void gemm_block(const float* w, int64_t ldw, int valid, const float* X, int64_t ldx, int64_t K,
                                   float* Y, int64_t ldy, bool accumulate, const Prefetch& next = {}) {
  const float* w0 = w;
  const float* w1 = w + std::min(1, valid - 1) * ldw;
  const float* w2 = w + std::min(2, valid - 1) * ldw;
  const float* w3 = w + std::min(3, valid - 1) * ldw;
  __m512 acc[kGemmWRows][R];
  for (int r = 0; r < R; ++r) acc[0][r] = acc[1][r] = acc[2][r] = acc[3][r] = _mm512_setzero_ps();
  int64_t k = 0;
  if (next.rows > 0)
    for (; k + 16 <= K; k += 16) {
      for (int i = 0; i < next.rows; ++i) _mm_prefetch(next.p + i * next.ld + k / 16 * next.step, _MM_HINT_T1);
      gemm_step<R>(acc, w0 + k, w1 + k, w2 + k, w3 + k, X + k, ldx);
    }
  for (; k + 16 <= K; k += 16) gemm_step<R>(acc, w0 + k, w1 + k, w2 + k, w3 + k, X + k, ldx);
  if (k < K)  // the K tail: the lanes past K load zeros
    gemm_step<R>(acc, w0 + k, w1 + k, w2 + k, w3 + k, X + k, ldx, static_cast<__mmask16>((1u << (K - k)) - 1));
  store_sums<R, 0>(acc, Y, ldy, valid, accumulate);
}

RLHF_PACKED_AVX512 void gemm_rows(int R, const float* w, int64_t ldw, int valid, const float* X, int64_t ldx,
                                  int64_t K, float* Y, int64_t ldy, bool accumulate, const Prefetch& next) {
  switch (R) {
    case 1: return gemm_block<1>(w, ldw, valid, X, ldx, K, Y, ldy, accumulate, next);
    case 2: return gemm_block<2>(w, ldw, valid, X, ldx, K, Y, ldy, accumulate, next);
    case 3: return gemm_block<3>(w, ldw, valid, X, ldx, K, Y, ldy, accumulate, next);
    case 4: return gemm_block<4>(w, ldw, valid, X, ldx, K, Y, ldy, accumulate, next);
    case 5: return gemm_block<5>(w, ldw, valid, X, ldx, K, Y, ldy, accumulate, next);
    default: return gemm_block<6>(w, ldw, valid, X, ldx, K, Y, ldy, accumulate, next);
  }
}

// X (M, Kp) contiguous, Y (M, N) contiguous. Threads take blocks of 4 weight rows; a block's
// K chunk (widened to float32 in a small buffer unless it is float32 already) stays in L1
// while every chunk of up to 6 x rows (split evenly: 16 rows = 6 + 5 + 5) passes over it.
void gemm_avx512(const PackedWeight& w, int64_t M, const float* X, float* Y) {
  const int64_t N = w.rows, Kp = padded_cols(w);
  const int64_t n_k = (Kp + kGemmMaxKc - 1) / kGemmMaxKc;
  const int64_t kc = ((Kp + n_k - 1) / n_k + kQ8_0Block - 1) / kQ8_0Block * kQ8_0Block;
  const int64_t n_x = (M + kGemmXRows - 1) / kGemmXRows;
  const int64_t n_blocks = (N + kGemmWRows - 1) / kGemmWRows;
  const bool f32 = w.format == WeightFormat::F32;
  const int64_t row_bytes = w.data.size(1) * w.data.element_size();  // a stored row
  const int step_bytes = w.format == WeightFormat::F32 ? 64 : w.format == WeightFormat::BF16 ? 32 : 17;  // per 16 values
  at::parallel_for(0, n_blocks, 8, [&](int64_t b0, int64_t b1) {
    alignas(64) float buf[kGemmWRows * kGemmMaxKc];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b * kGemmWRows;
      const int valid = static_cast<int>(std::min<int64_t>(kGemmWRows, N - n));
      for (int64_t k0 = 0; k0 < Kp; k0 += kc) {
        const int64_t len = std::min(kc, Kp - k0);
        const float* wk = buf;
        int64_t ldw = len;
        if (f32) {
          wk = w.data.data_ptr<float>() + n * Kp + k0;
          ldw = Kp;
        } else {
          for (int i = 0; i < valid; ++i) widen_range_avx512(w, n + i, k0, len, buf + i * len);
        }
        // The first pass over the block waits on memory for its weights (float32 are read in
        // place; the others were just widened); the later passes compute from L1 and share
        // out the prefetch of what this thread multiplies next (the block's next K chunk, or
        // the next block), so that memory and arithmetic overlap. With one pass (up to 6 rows
        // of x), that pass prefetches. A prefetch never faults: lines past W are harmless.
        Prefetch next;
        if (k0 + kc < Kp || b + 1 < b1) {
          const int64_t nn = k0 + kc < Kp ? n : n + kGemmWRows, kk = k0 + kc < Kp ? k0 + kc : 0;
          next.ld = row_bytes;
          next.step = step_bytes;
          next.p = static_cast<const char*>(w.data.data_ptr()) + nn * row_bytes + kk / 16 * step_bytes;
        }
        for (int64_t c = 0, m = 0; c < n_x; ++c) {
          const int64_t R = (M - m + (n_x - c) - 1) / (n_x - c);
          int64_t r0 = 0, r1 = kGemmWRows;  // rows of `next` this pass prefetches
          if (n_x > 1) {
            r0 = c == 0 ? 0 : (c - 1) * kGemmWRows / (n_x - 1);
            r1 = c == 0 ? 0 : c * kGemmWRows / (n_x - 1);
          }
          Prefetch part = next;
          part.p = next.p ? next.p + r0 * row_bytes : nullptr;
          part.rows = next.p ? static_cast<int>(r1 - r0) : 0;
          gemm_rows(static_cast<int>(R), wk, ldw, valid, X + m * Kp + k0, Kp, len, Y + m * N + n, N, k0 > 0, part);
          m += R;
        }
      }
    }
  });
}

// ---- panels: many rows of x ----------------------------------------------------------
// Panels of P weight rows are widened to float32 in a thread's buffer (~512 KiB, in L2 with
// the rows of x) and
// multiplied against all M rows of x by sgemm (one thread's, inside our parallel loop): the
// packed weight is read once, the float copy never leaves the cache.
void panels(const PackedWeight& w, const torch::Tensor& X, torch::Tensor& Y) {  // X (M, Kp), Y (M, N)
  const int64_t N = w.rows, Kp = padded_cols(w);
  const int64_t P = std::clamp<int64_t>((131072 / Kp) / 16 * 16, 16, 256);
  const int64_t n_panels = (N + P - 1) / P;
  // InferenceMode is per thread: the workers take the caller's, or mm_out refuses to write
  // into an inference tensor (the output) from outside it.
  const bool inference = c10::InferenceMode::is_enabled();
  at::parallel_for(0, n_panels, 1, [&](int64_t p0, int64_t p1) {
    c10::InferenceMode guard(inference);
    auto buf = torch::empty({P, Kp}, torch::kFloat32);
    float* b = buf.data_ptr<float>();
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n0 = p * P, rows = std::min(P, N - n0);
      for (int64_t i = 0; i < rows; ++i) widen_row(w, n0 + i, b + i * Kp);
      auto out = Y.narrow(1, n0, rows);  // (M, rows), rows N apart
      at::mm_out(out, X, buf.narrow(0, 0, rows).t());
    }
  });
}

void check_packed(const PackedWeight& w, const char* what) {
  check(w.defined() && w.data.is_contiguous() && w.data.device().is_cpu() && w.data.dim() == 2 &&
            w.data.size(0) == w.rows,
        std::string(what) + ": the packed weight must be a contiguous 2-D CPU tensor of its rows");
  const int64_t expected = w.format == WeightFormat::Q8_0 ? q8_0_blocks(w.cols) * kQ8_0BlockBytes : w.cols;
  const auto dtype = w.format == WeightFormat::F32    ? torch::kFloat32
                     : w.format == WeightFormat::BF16 ? torch::kBFloat16
                                                      : torch::kUInt8;
  check(w.data.size(1) == expected && w.data.scalar_type() == dtype,
        std::string(what) + ": packed data does not match its format " + weight_format_name(w.format));
}

}  // namespace

PackedWeight pack(const torch::Tensor& weight, WeightFormat format) {
  check(weight.dim() == 2 && weight.is_floating_point(), "pack: the weight must be a 2-D floating-point matrix");
  PackedWeight out{format, weight.size(0), weight.size(1), {}};
  const auto w = weight.detach().to(torch::kCPU);
  if (format == WeightFormat::F32) {
    out.data = w.to(torch::kFloat32).contiguous();
    return out;
  }
  if (format == WeightFormat::BF16) {
    out.data = w.to(torch::kBFloat16).contiguous();  // round to nearest even
    return out;
  }
  // Q8_0 as llama.cpp's quantize_row_q8_0: d = max|x| / 127, q = round(x / d) (halves away
  // from zero), d stored as fp16; a partial last block is padded with zeros.
  const int64_t N = out.rows, K = out.cols, nb = q8_0_blocks(K);
  const auto wf = w.to(torch::kFloat32).contiguous();
  out.data = torch::empty({N, nb * kQ8_0BlockBytes}, torch::kUInt8);
  const float* src = wf.data_ptr<float>();
  uint8_t* dst = out.data.data_ptr<uint8_t>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t b = 0; b < nb; ++b) {
        float x[kQ8_0Block] = {};
        const int64_t k0 = b * kQ8_0Block, len = std::min(kQ8_0Block, K - k0);
        std::memcpy(x, src + n * K + k0, len * sizeof(float));
        float amax = 0;
        for (float v : x) amax = std::max(amax, std::fabs(v));
        const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
        uint8_t* blk = dst + (n * nb + b) * kQ8_0BlockBytes;
        const uint16_t bits = c10::Half(d).x;
        std::memcpy(blk, &bits, 2);
        for (int64_t k = 0; k < kQ8_0Block; ++k) reinterpret_cast<int8_t*>(blk + 2)[k] = static_cast<int8_t>(std::round(x[k] * id));
      }
  });
  return out;
}

PackedWeight q8_0_from_blocks(const torch::Tensor& blocks, int64_t rows, int64_t cols) {
  PackedWeight out{WeightFormat::Q8_0, rows, cols, blocks.to(torch::kCPU, torch::kUInt8).contiguous()};
  check_packed(out, "q8_0_from_blocks");
  return out;
}

PackedWeight concat_rows(const std::vector<PackedWeight>& parts) {
  check(!parts.empty(), "concat_rows: no weights");
  PackedWeight out{parts[0].format, 0, parts[0].cols, {}};
  std::vector<torch::Tensor> data;
  for (const auto& p : parts) {
    check(p.cols == out.cols, "concat_rows: the weights have different column counts");
    out.rows += p.rows;
    data.push_back(p.format == out.format ? p.data : pack(dequantize(p), out.format).data);
  }
  out.data = torch::cat(data, 0);
  return out;
}

torch::Tensor dequantize(const PackedWeight& w) {
  check_packed(w, "dequantize");
  if (w.format == WeightFormat::F32) return w.data.clone();
  const int64_t Kp = padded_cols(w);
  auto out = torch::empty({w.rows, Kp}, torch::kFloat32);
  float* y = out.data_ptr<float>();
  at::parallel_for(0, w.rows, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) widen_row(w, n, y + n * Kp);
  });
  return Kp == w.cols ? out : out.narrow(1, 0, w.cols).contiguous();
}

torch::Tensor dequantize_rows(const PackedWeight& w, const torch::Tensor& index) {
  check_packed(w, "dequantize_rows");
  auto idx = index.to(torch::kCPU, torch::kLong).contiguous();
  const int64_t* ip = idx.data_ptr<int64_t>();
  const int64_t n = idx.numel(), Kp = padded_cols(w);
  for (int64_t i = 0; i < n; ++i)
    check(ip[i] >= 0 && ip[i] < w.rows, "embedding: token id " + std::to_string(ip[i]) + " is out of range [0, " +
                                            std::to_string(w.rows) + ")");
  auto out = torch::empty({n, Kp}, torch::kFloat32);
  float* y = out.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i) widen_row(w, ip[i], y + i * Kp);
  auto shape = index.sizes().vec();
  shape.push_back(w.cols);
  return out.narrow(1, 0, w.cols).reshape(shape).to(index.device());
}

torch::Tensor packed_linear(const torch::Tensor& x, const PackedWeight& w, const torch::Tensor& bias) {
  RECORD_FUNCTION("rlhf::packed_linear", std::vector<c10::IValue>());  // named in RLHF_PROFILE's tables
  check_packed(w, "packed_linear");
  check(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() >= 1 && x.size(-1) == w.cols,
        "packed_linear: x must be float32 on the CPU with " + std::to_string(w.cols) + " features");
  const int64_t K = w.cols, N = w.rows, Kp = padded_cols(w), M = x.numel() / std::max<int64_t>(K, 1);
  auto out_shape = x.sizes().vec();
  out_shape.back() = N;
  const int64_t own_rows = w.format == WeightFormat::F32 ? kFloatLinearOwnRows : kPackedLinearOwnRows;
  const bool own_gemm = M > kMaxGemvRows && M <= own_rows && use_avx512();
  if (M > kMaxGemvRows && !own_gemm && w.format == WeightFormat::F32) {  // already float: sgemm reads it directly
    auto y = torch::matmul(x, w.data.t());
    return bias.defined() ? y.add_(bias) : y;
  }
  auto X = x.reshape({M, K});
  if (Kp != K) X = torch::constant_pad_nd(X, {0, Kp - K});
  X = X.contiguous();
  auto Y = torch::empty({M, N}, torch::kFloat32);
  if (M > 0) {
    if (M <= kMaxGemvRows) gemv(w, M, X.data_ptr<float>(), Kp, Y.data_ptr<float>(), N);
    else if (own_gemm) gemm_avx512(w, M, X.data_ptr<float>(), Y.data_ptr<float>());
    else panels(w, X, Y);
  }
  if (bias.defined()) Y.add_(bias.to(torch::kFloat32));
  return Y.view(out_shape);
}

void packed_kernels_force_portable(bool on) { g_kernels.store(on ? 2 : 0, std::memory_order_relaxed); }

}  // namespace rlhf
