#include "kernels/attention_kernel.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "kernels/avx512_math.h"

// GCC 12 warns inside its own AVX-512 reduce intrinsics (their _mm512_undefined_ps): a known
// false positive, not our code.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace rlhf {

namespace {

constexpr int64_t kLanes = 16;      // one AVX-512 register of floats
constexpr int64_t kMaxHeadDim = 32;  // larger heads go to ATen's kernel, which is built for them
constexpr int64_t kMaxDecodeHeadDim = 256;  // decoding steps (decode_heads)

using avx512::exp_nonpositive;

// Lanes of the block starting at j0 that are inside the window [0, n).
RLHF_AVX512 inline __mmask16 lanes_in(int64_t j0, int64_t n) {
  return n - j0 >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << (n - j0)) - 1);
}

// One query row of the forward: scores against keys [0, n) of the window (kT, vT rows `ld`
// apart, already offset to the window start; padded so whole blocks can be read), softmax,
// weighted sum of values. `s` is scratch of n rounded up to a block. Writes out[D] and
// returns the log-sum-exp. kD = 0: any D <= 32.
template <int64_t kD>
RLHF_AVX512 float forward_row(const float* q, const float* kT, const float* vT, int64_t ld, int64_t n, int64_t D_rt,
                              float scale, float* s, float* out) {
  const int64_t D = kD > 0 ? kD : D_rt;
  __m512 qv[kMaxHeadDim], o[kMaxHeadDim];
  for (int64_t d = 0; d < D; ++d) {
    qv[d] = _mm512_set1_ps(q[d] * scale);
    o[d] = _mm512_setzero_ps();
  }
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
  __m512 mx = neg_inf;
  for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
    __m512 acc = _mm512_setzero_ps();
    const __mmask16 in = lanes_in(j0, n);  // masked loads: never reads past the window
    for (int64_t d = 0; d < D; ++d) acc = _mm512_fmadd_ps(qv[d], _mm512_maskz_loadu_ps(in, kT + d * ld + j0), acc);
    acc = _mm512_mask_mov_ps(neg_inf, in, acc);
    _mm512_storeu_ps(s + j0, acc);
    mx = _mm512_max_ps(mx, acc);
  }
  const float m = _mm512_reduce_max_ps(mx);
  const __m512 mv = _mm512_set1_ps(m);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
    const __mmask16 in = lanes_in(j0, n);
    const __m512 e = _mm512_maskz_mov_ps(in, exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + j0), mv)));
    sum = _mm512_add_ps(sum, e);
    for (int64_t d = 0; d < D; ++d) o[d] = _mm512_fmadd_ps(e, _mm512_maskz_loadu_ps(in, vT + d * ld + j0), o[d]);
  }
  const float total = _mm512_reduce_add_ps(sum), inv = 1.0f / total;
  for (int64_t d = 0; d < D; ++d) out[d] = _mm512_reduce_add_ps(o[d]) * inv;
  return m + std::log(total);
}

// One query row of the backward, in one pass over the window: p = exp(q.k scale - lse),
// dp = dO.v, ds = p (dp - delta); dq = scale sum_j ds_j k_j; dk_j += scale ds_j q;
// dv_j += p_j dO.
template <int64_t kD>
RLHF_AVX512 void backward_row(const float* q, const float* dO, float delta, float lse, const float* kT, const float* vT,
                              int64_t ld, int64_t n, int64_t D_rt, float scale, float* dq, float* dkT, float* dvT) {
  const int64_t D = kD > 0 ? kD : D_rt;
  __m512 qv[kMaxHeadDim], gv[kMaxHeadDim], dqa[kMaxHeadDim];
  for (int64_t d = 0; d < D; ++d) {
    qv[d] = _mm512_set1_ps(q[d] * scale);
    gv[d] = _mm512_set1_ps(dO[d]);
    dqa[d] = _mm512_setzero_ps();
  }
  const __m512 lv = _mm512_set1_ps(lse), dv_ = _mm512_set1_ps(delta);
  for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
    __m512 sc = _mm512_setzero_ps(), dp = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; ++d) {
      sc = _mm512_fmadd_ps(qv[d], _mm512_loadu_ps(kT + d * ld + j0), sc);
      dp = _mm512_fmadd_ps(gv[d], _mm512_loadu_ps(vT + d * ld + j0), dp);
    }
    const __m512 p = _mm512_maskz_mov_ps(lanes_in(j0, n), exp_nonpositive(_mm512_sub_ps(sc, lv)));
    const __m512 ds = _mm512_mul_ps(p, _mm512_sub_ps(dp, dv_));
    for (int64_t d = 0; d < D; ++d) {
      float* dk = dkT + d * ld + j0;
      float* dv = dvT + d * ld + j0;
      dqa[d] = _mm512_fmadd_ps(ds, _mm512_loadu_ps(kT + d * ld + j0), dqa[d]);
      _mm512_storeu_ps(dk, _mm512_fmadd_ps(qv[d], ds, _mm512_loadu_ps(dk)));
      _mm512_storeu_ps(dv, _mm512_fmadd_ps(p, gv[d], _mm512_loadu_ps(dv)));
    }
  }
  for (int64_t d = 0; d < D; ++d) dq[d] = _mm512_reduce_add_ps(dqa[d]) * scale;
}

// Sixteen query rows i0 .. i0 + nrows - 1 in the lanes of a vector, for the block kernels
// below: which of them see key j (keys [start, i], and always themselves).
struct RowLanes {
  __m512i row, first;
  __mmask16 valid;
  RLHF_AVX512 RowLanes(int64_t i0, int64_t nrows, int64_t start)
      : row(_mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(i0)),
                             _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15))),
        first(_mm512_set1_epi32(static_cast<int>(start))),
        valid(nrows >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << nrows) - 1)) {}
  RLHF_AVX512 __mmask16 seeing(int64_t j) const {
    const __m512i key = _mm512_set1_epi32(static_cast<int>(j));
    return _mm512_cmple_epi32_mask(key, row) & (_mm512_cmpge_epi32_mask(key, first) | _mm512_cmpeq_epi32_mask(key, row)) &
           valid;
  }
};

// Sixteen query rows of one head at once, over one run of keys (row_ranges below drops a
// skipped span beforehand): vectorized over the rows (one lane each) and looping over keys, so there is no per-row set-up and no
// horizontal sum per output element, which dominate at short windows (PPO's minibatches:
// ~33 keys per row, where the row kernel spent more on them than on its key blocks).
// Rows i0 .. i0 + nrows - 1 see keys [start, i] (and always themselves). qT (kD, 16): their
// rotated queries, transposed. s: scratch of 16 floats per key, masks: one per key. Writes
// the outputs transposed to oT (kD, 16) and the log-sum-exps to lse[0, nrows).
template <int64_t kD>
RLHF_AVX512 void forward_block16(const float* qT, int64_t i0, int64_t nrows, int64_t start, const float* kT,
                                 const float* vT, int64_t ld, float scale, float* s, __mmask16* masks, float* oT,
                                 float* lse) {
  __m512 q[kD], o[kD];
  for (int64_t d = 0; d < kD; ++d) {
    q[d] = _mm512_mul_ps(_mm512_loadu_ps(qT + d * kLanes), _mm512_set1_ps(scale));
    o[d] = _mm512_setzero_ps();
  }
  const RowLanes lanes(i0, nrows, start);
  const __mmask16 valid = lanes.valid;
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
  const int64_t jlo = std::min(i0, start), jhi = i0 + nrows - 1;
  __m512 mx = neg_inf;
  for (int64_t j = jlo; j <= jhi; ++j) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t d = 0; d < kD; ++d) acc = _mm512_fmadd_ps(q[d], _mm512_set1_ps(kT[d * ld + j]), acc);
    const __mmask16 seen = lanes.seeing(j);
    acc = _mm512_mask_mov_ps(neg_inf, seen, acc);
    _mm512_storeu_ps(s + (j - jlo) * kLanes, acc);
    masks[j - jlo] = seen;
    mx = _mm512_max_ps(mx, acc);
  }
  mx = _mm512_maskz_mov_ps(valid, mx);  // lanes past the last row: 0, so nothing below is NaN
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = jlo; j <= jhi; ++j) {
    const __m512 p =
        _mm512_maskz_mov_ps(masks[j - jlo], exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + (j - jlo) * kLanes), mx)));
    sum = _mm512_add_ps(sum, p);
    for (int64_t d = 0; d < kD; ++d) o[d] = _mm512_fmadd_ps(p, _mm512_set1_ps(vT[d * ld + j]), o[d]);
  }
  const __m512 inv = _mm512_maskz_div_ps(valid, _mm512_set1_ps(1.0f), sum);
  for (int64_t d = 0; d < kD; ++d) _mm512_storeu_ps(oT + d * kLanes, _mm512_mul_ps(o[d], inv));
  alignas(64) float m[kLanes], t[kLanes];
  _mm512_store_ps(m, mx);
  _mm512_store_ps(t, sum);
  for (int64_t r = 0; r < nrows; ++r) lse[r] = m[r] + std::log(t[r]);
}

// The backward of forward_block16 for sixteen query rows of one head (head size 8), in two
// passes over their keys [min(i0, start), i0 + nrows - 1]. Pass one, rows in lanes: the
// probabilities P (recomputed from the log-sum-exps), dS = P (dP - delta), and dQ += dS K,
// keeping P and dS per key in Ps, DSs (16 floats per key). Pass two, the rows unrolled:
// dK_j += scale sum_r dS_rj q_r and dV_j += sum_r P_rj dO_r into row-major accumulators
// dK, dV (T, 8). No horizontal sums anywhere. qT/gT (8, 16): rotated queries and output
// gradients transposed; qR/gR (16, 8) the same row-major; delta, lse (16). Writes the rows'
// query gradients (before the rotary transpose) transposed to dqT (8, 16).
RLHF_AVX512 void backward_block16(const float* qT, const float* gT, const float* qR, const float* gR, const float* delta,
                                  const float* lse, int64_t i0, int64_t nrows, int64_t start, const float* kT,
                                  const float* vT, int64_t ld, float scale, float* Ps, float* DSs, float* dqT, float* dK,
                                  float* dV) {
  constexpr int64_t kD = 8;
  const RowLanes lanes(i0, nrows, start);
  const __mmask16 valid = lanes.valid;
  __m512 q[kD], g[kD], dq[kD];
  for (int64_t d = 0; d < kD; ++d) {
    q[d] = _mm512_mul_ps(_mm512_loadu_ps(qT + d * kLanes), _mm512_set1_ps(scale));
    g[d] = _mm512_loadu_ps(gT + d * kLanes);
    dq[d] = _mm512_setzero_ps();
  }
  const __m512 l = _mm512_maskz_loadu_ps(valid, lse), e = _mm512_maskz_loadu_ps(valid, delta);
  const int64_t jlo = std::min(i0, start), jhi = i0 + nrows - 1;
  for (int64_t j = jlo; j <= jhi; ++j) {
    __m512 sc = _mm512_setzero_ps(), dp = _mm512_setzero_ps();
    for (int64_t d = 0; d < kD; ++d) {
      sc = _mm512_fmadd_ps(q[d], _mm512_set1_ps(kT[d * ld + j]), sc);
      dp = _mm512_fmadd_ps(g[d], _mm512_set1_ps(vT[d * ld + j]), dp);
    }
    const __m512 p = _mm512_maskz_mov_ps(lanes.seeing(j), exp_nonpositive(_mm512_sub_ps(sc, l)));
    const __m512 ds = _mm512_mul_ps(p, _mm512_sub_ps(dp, e));
    for (int64_t d = 0; d < kD; ++d) dq[d] = _mm512_fmadd_ps(ds, _mm512_set1_ps(kT[d * ld + j]), dq[d]);
    _mm512_storeu_ps(Ps + (j - jlo) * kLanes, p);
    _mm512_storeu_ps(DSs + (j - jlo) * kLanes, ds);
  }
  for (int64_t d = 0; d < kD; ++d) _mm512_storeu_ps(dqT + d * kLanes, _mm512_mul_ps(dq[d], _mm512_set1_ps(scale)));
  const __m256 sc8 = _mm256_set1_ps(scale);
  for (int64_t j = jlo; j <= jhi; ++j) {
    const float *pj = Ps + (j - jlo) * kLanes, *dsj = DSs + (j - jlo) * kLanes;
    __m256 ak = _mm256_setzero_ps(), av = _mm256_setzero_ps();
    for (int64_t r = std::max<int64_t>(0, j - i0); r < nrows; ++r) {  // rows before j do not see it
      ak = _mm256_fmadd_ps(_mm256_set1_ps(dsj[r]), _mm256_loadu_ps(qR + r * kD), ak);
      av = _mm256_fmadd_ps(_mm256_set1_ps(pj[r]), _mm256_loadu_ps(gR + r * kD), av);
    }
    _mm256_storeu_ps(dK + j * kD, _mm256_fmadd_ps(ak, sc8, _mm256_loadu_ps(dK + j * kD)));
    _mm256_storeu_ps(dV + j * kD, _mm256_add_ps(av, _mm256_loadu_ps(dV + j * kD)));
  }
}

// Decoding: the G query heads that share one K/V head, at any even head size up to 256, in
// three passes over the window's keys, each vectorized over key positions (the caches are
// (D, capacity): contiguous over positions). The scores read every key column once for all
// G heads; the values are taken sixteen d-rows at a time, whose accumulators are summed
// across lanes by one transpose-add (reduce16) instead of sixteen horizontal sums.

// r[i] = sum of the lanes of a[i]: pairs of vectors are interleaved and added four times,
// halving the count of vectors each time, 45 instructions for the sixteen sums.
RLHF_AVX512 inline __m512 reduce16(const __m512 (&a)[kLanes]) {
  __m512 b[8], c[4], d[2];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: a2i[0]+a2i[2], a2i+1[0]+a2i+1[2], a2i[1]+a2i[3], ...
    b[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)  // per 128-bit lane: the lane's sums of a4i .. a4i+3
    c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)  // 128-bit lanes added in pairs
    d[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// Scores of kG query heads q (kG, D), already scaled, against the kU blocks of keys from j0
// (kT rows `ld` apart): s (kG, ls). The last block's lanes outside `in` score -inf and read
// nothing. Several blocks at once for few heads, so enough accumulators are in flight to
// hide the latency of the multiply-adds.
template <int kG, int kU>
RLHF_AVX512 inline void decode_scores_block(const float* q, int64_t D, const float* kT, int64_t ld, int64_t j0,
                                            __mmask16 in, float* s, int64_t ls) {
  // The loops over heads and blocks are unrolled by hand (GCC 12 otherwise keeps a copy of
  // the accumulators on the stack, stored on every step).
  __m512 acc[kG * kU];  // (kG, kU)
#pragma GCC unroll 32
  for (int i = 0; i < kG * kU; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; ++d) {
    __m512 k[kU];
#pragma GCC unroll 4
    for (int u = 0; u < kU; ++u)
      k[u] = _mm512_maskz_loadu_ps(u == kU - 1 ? in : __mmask16(0xFFFF), kT + d * ld + j0 + u * kLanes);
#pragma GCC unroll 8
    for (int g = 0; g < kG; ++g) {
      const __m512 qd = _mm512_set1_ps(q[g * D + d]);
#pragma GCC unroll 4
      for (int u = 0; u < kU; ++u) acc[g * kU + u] = _mm512_fmadd_ps(qd, k[u], acc[g * kU + u]);
    }
  }
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
#pragma GCC unroll 8
  for (int g = 0; g < kG; ++g)
#pragma GCC unroll 4
    for (int u = 0; u < kU; ++u)
      _mm512_storeu_ps(s + g * ls + j0 + u * kLanes,
                       u == kU - 1 ? _mm512_mask_mov_ps(neg_inf, in, acc[g * kU + u]) : acc[g * kU + u]);
}

// Scores of kG heads against keys [0, n).
template <int kG>
RLHF_AVX512 void decode_scores(const float* q, int64_t D, const float* kT, int64_t ld, int64_t n, float* s,
                               int64_t ls) {
  constexpr int kU = kG == 1 ? 4 : kG <= 4 ? 2 : 1;
  int64_t j0 = 0;
  for (; j0 + kU * kLanes <= n; j0 += kU * kLanes) decode_scores_block<kG, kU>(q, D, kT, ld, j0, 0xFFFF, s, ls);
  for (; j0 < n; j0 += kLanes) decode_scores_block<kG, 1>(q, D, kT, ld, j0, lanes_in(j0, n), s, ls);
}

using DecodeScores = void (*)(const float*, int64_t, const float*, int64_t, int64_t, float*, int64_t);
constexpr DecodeScores kDecodeScores[] = {decode_scores<1>, decode_scores<2>, decode_scores<3>, decode_scores<4>,
                                          decode_scores<5>, decode_scores<6>, decode_scores<7>, decode_scores<8>};

// Softmax of one head's scores s[0, n) in place, shifted by their maximum; the lanes after n
// in the last block become 0. Returns 1 / the sum of the exponentials.
RLHF_AVX512 float decode_softmax(float* s, int64_t n) {
  __m512 mx = _mm512_set1_ps(-INFINITY);
  for (int64_t j0 = 0; j0 < n; j0 += kLanes) mx = _mm512_max_ps(mx, _mm512_loadu_ps(s + j0));  // tail lanes: -inf
  const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
    const __m512 e = _mm512_maskz_mov_ps(lanes_in(j0, n), exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + j0), m)));
    sum = _mm512_add_ps(sum, e);
    _mm512_storeu_ps(s + j0, e);
  }
  return 1.0f / _mm512_reduce_add_ps(sum);
}

// out[r] = inv sum_j p[j] vT[r ld + j] over keys [0, n) for kRows <= 16 rows of the values.
// Lanes past n are read masked: the cache holds no values there yet.
template <int kRows>
RLHF_AVX512 void decode_values(const float* p, const float* vT, int64_t ld, int64_t n, float inv, float* out) {
  __m512 acc[kLanes];  // rows kRows.. stay 0; loops unrolled by hand, as in decode_scores_block
#pragma GCC unroll 16
  for (int r = 0; r < kLanes; ++r) acc[r] = _mm512_setzero_ps();
  int64_t j0 = 0;
  for (; j0 + kLanes <= n; j0 += kLanes) {
    const __m512 pj = _mm512_loadu_ps(p + j0);
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) acc[r] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vT + r * ld + j0), acc[r]);
  }
  if (j0 < n) {
    const __mmask16 in = lanes_in(j0, n);
    const __m512 pj = _mm512_maskz_loadu_ps(in, p + j0);
#pragma GCC unroll 16
    for (int r = 0; r < kRows; ++r) acc[r] = _mm512_fmadd_ps(pj, _mm512_maskz_loadu_ps(in, vT + r * ld + j0), acc[r]);
  }
  _mm512_mask_storeu_ps(out, __mmask16((1u << kRows) - 1), _mm512_mul_ps(reduce16(acc), _mm512_set1_ps(inv)));
}

// Attention of G query heads q (G, D) (rotated, scaled) over keys [0, n) of one K/V head
// (kT, vT (D, ld), offset to the window's start). s: scratch of G x ls floats, ls >= n
// rounded up to a block; inv: of G. Writes out (G, D).
RLHF_AVX512 void decode_heads(const float* q, int64_t G, int64_t D, const float* kT, const float* vT, int64_t ld,
                              int64_t n, float* s, int64_t ls, float* inv, float* out) {
  for (int64_t g0 = 0; g0 < G; g0 += 8) {
    const int64_t nh = std::min<int64_t>(8, G - g0);
    kDecodeScores[nh - 1](q + g0 * D, D, kT, ld, n, s + g0 * ls, ls);
  }
  for (int64_t h = 0; h < G; ++h) inv[h] = decode_softmax(s + h * ls, n);
  // Sixteen d-rows at a time for every head, so the rows' block of V is read from memory
  // once and from cache by the other heads; even head sizes end in 8, 4 or 2 rows.
  int64_t d0 = 0;
  auto rows = [&](auto values, int64_t count) {
    for (; d0 + count <= D; d0 += count)
      for (int64_t h = 0; h < G; ++h) values(s + h * ls, vT + d0 * ld, ld, n, inv[h], out + h * D + d0);
  };
  rows(decode_values<16>, 16);
  rows(decode_values<8>, 8);
  rows(decode_values<4>, 4);
  rows(decode_values<2>, 2);
}

using ForwardRow = float (*)(const float*, const float*, const float*, int64_t, int64_t, int64_t, float, float*, float*);
using BackwardRow = void (*)(const float*, const float*, float, float, const float*, const float*, int64_t, int64_t,
                             int64_t, float, float*, float*, float*);

// Unrolled over D for the common head sizes; any D <= 32 otherwise.
std::pair<ForwardRow, BackwardRow> row_kernels(int64_t D) {
  switch (D) {
    case 8: return {forward_row<8>, backward_row<8>};
    case 16: return {forward_row<16>, backward_row<16>};
    case 32: return {forward_row<32>, backward_row<32>};
    default: return {forward_row<0>, backward_row<0>};
  }
}

// Strided (B, T, heads, D) access with D contiguous.
struct View4 {
  const float* p;
  int64_t sb, st, sh;
  const float* at(int64_t b, int64_t t, int64_t h) const { return p + b * sb + t * st + h * sh; }
};

View4 view_of(const torch::Tensor& x) { return {x.data_ptr<float>(), x.stride(0), x.stride(1), x.stride(2)}; }

torch::Tensor d_contiguous(const torch::Tensor& x) { return x.stride(3) == 1 ? x : x.contiguous(); }

// Rotary embedding of one head vector at (b, t): y = x cos + rotate_half(x) sin, with
// rotate_half(x) = (-x2, x1) over the two halves; and its transpose for the backward,
// dx = dy cos + (dy2 sin2, -dy1 sin1) swapped back. Identity without cos/sin (GPT-2).
struct Rope {
  const float *cos = nullptr, *sin = nullptr;
  int64_t T = 0, D = 0;
  void apply(const float* x, int64_t b, int64_t t, float* y) const {
    if (!cos) return (void)std::memcpy(y, x, sizeof(float) * D);
    const float *c = cos + (b * T + t) * D, *s = sin + (b * T + t) * D;
    const int64_t h = D / 2;
    for (int64_t d = 0; d < h; ++d) y[d] = x[d] * c[d] - x[d + h] * s[d];
    for (int64_t d = h; d < D; ++d) y[d] = x[d] * c[d] + x[d - h] * s[d];
  }
  void apply_transposed(const float* dy, int64_t b, int64_t t, float* dx) const {
    if (!cos) return (void)std::memcpy(dx, dy, sizeof(float) * D);
    const float *c = cos + (b * T + t) * D, *s = sin + (b * T + t) * D;
    const int64_t h = D / 2;
    for (int64_t d = 0; d < h; ++d) dx[d] = dy[d] * c[d] + dy[d + h] * s[d + h];
    for (int64_t d = h; d < D; ++d) dx[d] = dy[d] * c[d] - dy[d - h] * s[d - h];
  }
};

struct Shapes {
  int64_t B, T, H, Hkv, D, G;
  float scale;
};

Shapes shapes_of(const torch::Tensor& qkv, int64_t H, int64_t Hkv) {
  check(qkv.dim() == 4 && Hkv > 0 && H % Hkv == 0 && qkv.size(2) == H + 2 * Hkv,
        "causal_attention_cpu: qkv must be (B, T, H + 2 H_kv, D) with H a multiple of H_kv");
  Shapes s{qkv.size(0), qkv.size(1), H, Hkv, qkv.size(3), H / Hkv, 0.0f};
  s.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.D)));
  return s;
}

Rope rope_of(const torch::Tensor& cos, const torch::Tensor& sin, const Shapes& s) {
  if (cos.numel() == 0) return {nullptr, nullptr, s.T, s.D};  // no rotary embedding
  return {cos.data_ptr<float>(), sin.data_ptr<float>(), s.T, s.D};
}

// Rotated head g of K (or plain V) for row b into xT (D, ld); columns T.. stay zero.
void load_head(const View4& x, int64_t b, int64_t head, const Rope* rope, const Shapes& s, int64_t ld, float* xT) {
  float y[kMaxHeadDim];
  for (int64_t t = 0; t < s.T; ++t) {
    const float* src = x.at(b, t, head);
    if (rope) rope->apply(src, b, t, y);
    else std::memcpy(y, src, sizeof(float) * s.D);
    for (int64_t d = 0; d < s.D; ++d) xT[d * ld + t] = y[d];
  }
}

// The windows of row b, read from the (4, B) tensor of starts, ends, skip begins and ends.
struct Window {
  int64_t start, end, skip_begin, skip_end;
  int64_t skipped() const { return skip_end - skip_begin; }
};

struct Windows {
  const int64_t* w;
  int64_t B;
  Window operator()(int64_t b) const { return {w[b], w[B + b], w[2 * B + b], w[3 * B + b]}; }
};

// The keys a query row sees when it comes after a skipped span: columns [0, skip_begin)
// and [skip_end, T) of xT side by side in yT (D, ld), zeros after.
void drop_span(const float* xT, const Window& w, int64_t D, int64_t T, int64_t ld, float* yT) {
  for (int64_t d = 0; d < D; ++d) {
    const float* x = xT + d * ld;
    float* y = yT + d * ld;
    std::memcpy(y, x, sizeof(float) * w.skip_begin);
    std::memcpy(y + w.skip_begin, x + w.skip_end, sizeof(float) * (T - w.skip_end));
    std::fill(y + T - w.skipped(), y + ld, 0.0f);
  }
}

// Query rows that see the same keys, for the sixteen-row kernels: all rows of the window,
// or, with a skipped span, the rows before its end (all keys) and the rows after it (the
// keys with the span dropped, where row i sits at column i - shift).
struct RowRange {
  int64_t begin, end, shift;
  const float *k, *v;
};
std::vector<RowRange> row_ranges(const Window& w, const float* kT, const float* vT, const float* k2T, const float* v2T) {
  if (w.skipped() == 0) return {{0, w.end, 0, kT, vT}};
  return {{0, w.skip_end, 0, kT, vT}, {w.skip_end, w.end, w.skipped(), k2T, v2T}};
}

// Forward: out (B, T, H, D) and the log-sum-exp of every row (B, H, T).
std::pair<torch::Tensor, torch::Tensor> attention_forward(const torch::Tensor& qkv_in, const torch::Tensor& cos,
                                                          const torch::Tensor& sin, const torch::Tensor& windows,
                                                          int64_t H, int64_t Hkv) {
  const auto qkv = d_contiguous(qkv_in);
  const Shapes s = shapes_of(qkv, H, Hkv);
  const Rope rope = rope_of(cos, sin, s);
  auto out = torch::empty({s.B, s.T, s.H, s.D}, qkv.options());
  auto lse = torch::empty({s.B, s.H, s.T}, qkv.options());
  const View4 X = view_of(qkv);
  const Windows win{windows.data_ptr<int64_t>(), s.B};
  float* O = out.data_ptr<float>();
  float* L = lse.data_ptr<float>();
  const auto [fwd, bwd] = row_kernels(s.D);
  const int64_t ld = s.T + kLanes;  // room for the last block of a window
  at::parallel_for(0, s.B * s.Hkv, 1, [&](int64_t begin, int64_t end) {
    const avx512::FlushDenormals flush;
    std::vector<float> kT(s.D * ld, 0.0f), vT(s.D * ld, 0.0f), k2T, v2T, w(ld), w16(s.T * kLanes);
    std::vector<__mmask16> masks(s.T);
    float qr[kMaxHeadDim];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.Hkv, g = task % s.Hkv;
      const Window wb = win(b);
      load_head(X, b, s.H + g, &rope, s, ld, kT.data());
      load_head(X, b, s.H + s.Hkv + g, nullptr, s, ld, vT.data());
      if (wb.skipped() > 0) {
        k2T.resize(s.D * ld), v2T.resize(s.D * ld);
        drop_span(kT.data(), wb, s.D, s.T, ld, k2T.data());
        drop_span(vT.data(), wb, s.D, s.T, ld, v2T.data());
      }
      for (int64_t h = g * s.G; h < (g + 1) * s.G; ++h) {
        int64_t done = 0;  // rows handled sixteen at a time (head size 8)
        if (s.D == 8) {
          alignas(64) float qT[8 * kLanes], oT[8 * kLanes];
          for (const RowRange& range : row_ranges(wb, kT.data(), vT.data(), k2T.data(), v2T.data()))
            for (int64_t i0 = range.begin; i0 < range.end; i0 += kLanes) {
              const int64_t n = std::min(kLanes, range.end - i0);
              for (int64_t r = 0; r < n; ++r) {
                rope.apply(X.at(b, i0 + r, h), b, i0 + r, qr);
                for (int64_t d = 0; d < 8; ++d) qT[d * kLanes + r] = qr[d];
              }
              forward_block16<8>(qT, i0 - range.shift, n, wb.start, range.k, range.v, ld, s.scale, w16.data(),
                                 masks.data(), oT, L + (b * s.H + h) * s.T + i0);
              for (int64_t r = 0; r < n; ++r)
                for (int64_t d = 0; d < 8; ++d) O[((b * s.T + i0 + r) * s.H + h) * s.D + d] = oT[d * kLanes + r];
            }
          done = wb.end;
        }
        for (int64_t i = done; i < s.T; ++i) {
          float* o = O + ((b * s.T + i) * s.H + h) * s.D;
          float* l = L + (b * s.H + h) * s.T + i;
          if (i >= wb.end) {  // right padding: no work, output 0
            std::fill(o, o + s.D, 0.0f);
            *l = 0.0f;
            continue;
          }
          const int64_t lo = i < wb.start ? i : wb.start;
          const bool after = wb.skipped() > 0 && i >= wb.skip_end;  // sees the keys with the span dropped
          const float *k = after ? k2T.data() : kT.data(), *v = after ? v2T.data() : vT.data();
          const int64_t last = after ? i - wb.skipped() : i;
          rope.apply(X.at(b, i, h), b, i, qr);
          *l = fwd(qr, k + lo, v + lo, ld, last - lo + 1, s.D, s.scale, w.data(), o);
        }
      }
    }
  });
  return {out, lse};
}

// Backward: the gradient of qkv (B, T, H + 2 H_kv, D), every element written once (no
// zero-filled slices to add up), recomputing the probabilities from the log-sum-exp.
torch::Tensor attention_backward(const torch::Tensor& dout_in, const torch::Tensor& qkv_in, const torch::Tensor& cos,
                                 const torch::Tensor& sin, const torch::Tensor& out, const torch::Tensor& lse,
                                 const torch::Tensor& windows, int64_t H, int64_t Hkv) {
  const auto qkv = d_contiguous(qkv_in), dout = d_contiguous(dout_in);
  const Shapes s = shapes_of(qkv, H, Hkv);
  const Rope rope = rope_of(cos, sin, s);
  auto dqkv = torch::empty({s.B, s.T, s.H + 2 * s.Hkv, s.D}, qkv.options());
  const View4 X = view_of(qkv), dO = view_of(dout), O = view_of(out);
  const View4 dX{dqkv.data_ptr<float>(), dqkv.stride(0), dqkv.stride(1), dqkv.stride(2)};
  float* DX = dqkv.data_ptr<float>();
  const Windows win{windows.data_ptr<int64_t>(), s.B};
  const float* L = lse.data_ptr<float>();
  const auto [fwd, bwd] = row_kernels(s.D);
  const int64_t ld = s.T + kLanes;
  at::parallel_for(0, s.B * s.Hkv, 1, [&](int64_t begin, int64_t end) {
    const avx512::FlushDenormals flush;
    std::vector<float> kT(s.D * ld, 0.0f), vT(s.D * ld, 0.0f), dkT(s.D * ld), dvT(s.D * ld);
    std::vector<float> k2T, v2T, dk2T, dv2T;  // with the skipped span dropped
    const int64_t rows8 = s.D == 8 ? s.T * 8 : 0;
    std::vector<float> Ps(s.T * kLanes), DSs(s.T * kLanes), dKr(rows8), dVr(rows8), dK2r(rows8), dV2r(rows8);
    float qr[kMaxHeadDim], dqr[kMaxHeadDim], dk[kMaxHeadDim];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.Hkv, g = task % s.Hkv;
      const Window wb = win(b);
      load_head(X, b, s.H + g, &rope, s, ld, kT.data());
      load_head(X, b, s.H + s.Hkv + g, nullptr, s, ld, vT.data());
      std::fill(dkT.begin(), dkT.end(), 0.0f);
      std::fill(dvT.begin(), dvT.end(), 0.0f);
      if (wb.skipped() > 0) {
        for (auto* v : {&k2T, &v2T}) v->resize(s.D * ld);
        dk2T.assign(s.D * ld, 0.0f), dv2T.assign(s.D * ld, 0.0f);
        drop_span(kT.data(), wb, s.D, s.T, ld, k2T.data());
        drop_span(vT.data(), wb, s.D, s.T, ld, v2T.data());
      }
      // Head size 8: sixteen query rows per pass (backward_block16), dK and dV row-major in
      // dKr, dVr (and dK2r, dV2r for the rows after a skipped span, in its shifted columns).
      const bool blocks = s.D == 8;
      if (blocks)
        for (auto* v : {&dKr, &dVr, &dK2r, &dV2r}) std::fill(v->begin(), v->end(), 0.0f);
      for (int64_t h = g * s.G; h < (g + 1) * s.G; ++h) {
        int64_t done = 0;
        if (blocks) {
          alignas(64) float qT[8 * kLanes], gT[8 * kLanes], qR[kLanes * 8], gR[kLanes * 8], dqT[8 * kLanes];
          alignas(64) float delta[kLanes];
          for (const RowRange& range : row_ranges(wb, kT.data(), vT.data(), k2T.data(), v2T.data()))
          for (int64_t i0 = range.begin; i0 < range.end; i0 += kLanes) {
            const int64_t n = std::min(kLanes, range.end - i0);
            const bool after = range.shift > 0;
            for (int64_t r = 0; r < n; ++r) {
              const int64_t i = i0 + r;
              const float* gi = dO.at(b, i, h);
              const float* oi = O.at(b, i, h);
              delta[r] = 0.0f;  // rowsum(dO * O) = sum_j p_j dp_j
              for (int64_t d = 0; d < 8; ++d) delta[r] += gi[d] * oi[d];
              rope.apply(X.at(b, i, h), b, i, qR + r * 8);
              for (int64_t d = 0; d < 8; ++d) {
                gR[r * 8 + d] = gi[d];
                qT[d * kLanes + r] = qR[r * 8 + d];
                gT[d * kLanes + r] = gi[d];
              }
            }
            for (int64_t r = n; r < kLanes; ++r)  // lanes past the last row: zeros
              for (int64_t d = 0; d < 8; ++d) qT[d * kLanes + r] = gT[d * kLanes + r] = 0.0f;
            backward_block16(qT, gT, qR, gR, delta, L + (b * s.H + h) * s.T + i0, i0 - range.shift, n, wb.start,
                             range.k, range.v, ld, s.scale, Ps.data(), DSs.data(), dqT,
                             (after ? dK2r : dKr).data(), (after ? dV2r : dVr).data());
            for (int64_t r = 0; r < n; ++r) {
              for (int64_t d = 0; d < 8; ++d) dqr[d] = dqT[d * kLanes + r];
              rope.apply_transposed(dqr, b, i0 + r, DX + (b * dX.sb + (i0 + r) * dX.st + h * dX.sh));
            }
          }
          done = wb.end;
        }
        for (int64_t i = done; i < s.T; ++i) {
          float* dq_out = DX + (b * dX.sb + i * dX.st + h * dX.sh);
          if (i >= wb.end) {  // right padding: its output was a constant 0
            std::fill(dq_out, dq_out + s.D, 0.0f);
            continue;
          }
          const int64_t lo = i < wb.start ? i : wb.start;
          const bool after = wb.skipped() > 0 && i >= wb.skip_end;
          const float *k = after ? k2T.data() : kT.data(), *v = after ? v2T.data() : vT.data();
          float *dk_acc = after ? dk2T.data() : dkT.data(), *dv_acc = after ? dv2T.data() : dvT.data();
          const int64_t last = after ? i - wb.skipped() : i;
          const float* gi = dO.at(b, i, h);
          const float* oi = O.at(b, i, h);
          float delta = 0.0f;  // rowsum(dO * O) = sum_j p_j dp_j
          for (int64_t d = 0; d < s.D; ++d) delta += gi[d] * oi[d];
          rope.apply(X.at(b, i, h), b, i, qr);
          bwd(qr, gi, delta, L[(b * s.H + h) * s.T + i], k + lo, v + lo, ld, last - lo + 1, s.D, s.scale, dqr,
              dk_acc + lo, dv_acc + lo);
          rope.apply_transposed(dqr, b, i, dq_out);
        }
      }
      if (blocks)  // into the transposed accumulators the fold and write-out below read
        for (int64_t t = 0; t < s.T; ++t)
          for (int64_t d = 0; d < 8; ++d) {
            dkT[d * ld + t] = dKr[t * 8 + d], dvT[d * ld + t] = dVr[t * 8 + d];
            if (wb.skipped() > 0) dk2T[d * ld + t] = dK2r[t * 8 + d], dv2T[d * ld + t] = dV2r[t * 8 + d];
          }
      if (wb.skipped() > 0)  // the rows after the span saw its neighbours at shifted columns
        for (int64_t d = 0; d < s.D; ++d)
          for (int64_t j = 0; j < s.T - wb.skipped(); ++j) {
            const int64_t t = j < wb.skip_begin ? j : j + wb.skipped();
            dkT[d * ld + t] += dk2T[d * ld + j];
            dvT[d * ld + t] += dv2T[d * ld + j];
          }
      for (int64_t t = 0; t < s.T; ++t) {
        for (int64_t d = 0; d < s.D; ++d) dk[d] = dkT[d * ld + t];
        rope.apply_transposed(dk, b, t, DX + (b * dX.sb + t * dX.st + (s.H + g) * dX.sh));
        float* dv = DX + (b * dX.sb + t * dX.st + (s.H + s.Hkv + g) * dX.sh);
        for (int64_t d = 0; d < s.D; ++d) dv[d] = dvT[d * ld + t];
      }
    }
  });
  return dqkv;
}

struct CausalAttentionFn : torch::autograd::Function<CausalAttentionFn> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& qkv, const torch::Tensor& cos,
                               const torch::Tensor& sin, const torch::Tensor& windows, int64_t H, int64_t Hkv) {
    auto [out, lse] = attention_forward(qkv, cos, sin, windows, H, Hkv);
    ctx->save_for_backward({qkv, cos, sin, out, lse, windows});
    ctx->saved_data["H"] = H;
    ctx->saved_data["Hkv"] = Hkv;
    return out;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto v = ctx->get_saved_variables();
    auto dqkv = attention_backward(grads[0], v[0], v[1], v[2], v[3], v[4], v[5], ctx->saved_data["H"].toInt(),
                                   ctx->saved_data["Hkv"].toInt());
    return {dqkv, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

namespace {

// Whether our kernels take activations like `x`: float32 on a CPU with AVX-512, unless
// RLHF_ATTENTION=sdpa (to compare against ATen's kernels).
bool own_attention_allowed(const torch::Tensor& x) {
  static const bool disabled = [] {
    const char* e = std::getenv("RLHF_ATTENTION");
    return e && std::strcmp(e, "sdpa") == 0;
  }();
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return !disabled && avx512 && x.device().is_cpu() && x.scalar_type() == torch::kFloat32;
}

}  // namespace

bool causal_attention_cpu_applies(const torch::Tensor& x, int64_t head_dim) {
  return own_attention_allowed(x) && head_dim <= kMaxHeadDim;
}

bool decode_step_cpu_applies(const torch::Tensor& x, int64_t head_dim) {
  return own_attention_allowed(x) && head_dim <= kMaxDecodeHeadDim && head_dim % 2 == 0;
}

torch::Tensor decode_step_cpu(const torch::Tensor& qkv_in, int64_t H, int64_t Hkv, const torch::Tensor& cos,
                              const torch::Tensor& sin, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                              int64_t past, const torch::Tensor& start) {
  RECORD_FUNCTION("rlhf::decode_step_cpu", std::vector<c10::IValue>());  // named in RLHF_PROFILE's tables
  check(qkv_in.dim() == 4 && qkv_in.size(1) == 1 && qkv_in.size(2) == H + 2 * Hkv && k_cache.dim() == 4 &&
            k_cache.sizes() == v_cache.sizes() && k_cache.is_contiguous() && v_cache.is_contiguous() &&
            qkv_in.size(0) == k_cache.size(0) && k_cache.size(1) == Hkv && qkv_in.size(3) == k_cache.size(2) &&
            H % Hkv == 0 && past >= 0 && past < k_cache.size(3),
        "decode_step_cpu: qkv (B, 1, H + 2 H_kv, D) and contiguous caches (B, H_kv, D, capacity) with room for one more");
  check(qkv_in.scalar_type() == torch::kFloat32 && k_cache.scalar_type() == torch::kFloat32 &&
            qkv_in.size(3) <= kMaxDecodeHeadDim && qkv_in.size(3) % 2 == 0,
        "decode_step_cpu: float32, even head size at most " + std::to_string(kMaxDecodeHeadDim));
  const auto qkv = d_contiguous(qkv_in);
  const int64_t B = qkv.size(0), D = qkv.size(3), G = H / Hkv, cap = k_cache.size(3), S = past + 1;
  Shapes shapes{B, 1, H, Hkv, D, G, static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)))};
  torch::Tensor c = torch::empty({0}), sn = torch::empty({0});
  if (cos.defined()) {
    c = cos.reshape({-1, 1, D}).expand({B, 1, D}).contiguous();
    sn = sin.reshape({-1, 1, D}).expand({B, 1, D}).contiguous();
  }
  const Rope rope = rope_of(c, sn, shapes);
  auto st = start.to(torch::kCPU, torch::kLong).contiguous();
  auto out = torch::empty({B, 1, H, D}, qkv.options());
  const View4 X = view_of(qkv);
  float *K = k_cache.data_ptr<float>(), *V = v_cache.data_ptr<float>();
  const int64_t* stp = st.data_ptr<int64_t>();
  float* O = out.data_ptr<float>();
  const int64_t ls = (S + kLanes - 1) / kLanes * kLanes;
  at::parallel_for(0, B * Hkv, 1, [&](int64_t begin, int64_t end) {
    const avx512::FlushDenormals flush;
    std::vector<float> q(G * D), s(G * ls + G);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / Hkv, g = task % Hkv;
      float *kT = K + task * D * cap, *vT = V + task * D * cap;
      // The new position's key (rotated) and value go into the cache first.
      rope.apply(X.at(b, 0, H + g), b, 0, q.data());
      const float* v = X.at(b, 0, H + Hkv + g);
      for (int64_t d = 0; d < D; ++d) {
        kT[d * cap + past] = q[d];
        vT[d * cap + past] = v[d];
      }
      for (int64_t h = 0; h < G; ++h) {
        float* qh = q.data() + h * D;
        rope.apply(X.at(b, 0, g * G + h), b, 0, qh);
        for (int64_t d = 0; d < D; ++d) qh[d] *= shapes.scale;
      }
      const int64_t lo = std::min(stp[b], S - 1);  // a row of padding only: itself
      decode_heads(q.data(), G, D, kT + lo, vT + lo, cap, S - lo, s.data(), ls, s.data() + G * ls,
                   O + (b * H + g * G) * D);
    }
  });
  return out;
}

torch::Tensor causal_attention_cpu(const torch::Tensor& qkv, int64_t H, int64_t Hkv, const torch::Tensor& cos,
                                   const torch::Tensor& sin, const AttentionWindows& windows) {
  // Mixed precision (model/autocast.h) hands us bf16 projections: attention runs in float32
  // here all the same; the cast is recorded, so the gradient goes back in bf16.
  if (qkv.is_floating_point() && qkv.scalar_type() != torch::kFloat32)
    return causal_attention_cpu(qkv.to(torch::kFloat32), H, Hkv, cos, sin, windows);
  check(qkv.device().is_cpu() && qkv.scalar_type() == torch::kFloat32, "causal_attention_cpu: float32 CPU tensors only");
  check(qkv.dim() == 4 && qkv.size(3) <= kMaxHeadDim && qkv.size(3) % 2 == 0,
        "causal_attention_cpu: head size must be even and at most " + std::to_string(kMaxHeadDim));
  check(__builtin_cpu_supports("avx512f"), "causal_attention_cpu: needs a CPU with AVX-512");
  const int64_t B = qkv.size(0), T = qkv.size(1), D = qkv.size(3);
  torch::Tensor c = torch::empty({0}), s = torch::empty({0});  // autograd functions take no undefined inputs
  if (cos.defined()) {  // (B or 1, T, 1, D) or (B, T, D) -> (B, T, D) contiguous
    c = cos.reshape({-1, T, D}).expand({B, T, D}).contiguous();
    s = sin.reshape({-1, T, D}).expand({B, T, D}).contiguous();
    check(c.scalar_type() == torch::kFloat32 && s.scalar_type() == torch::kFloat32, "causal_attention_cpu: cos/sin must be float32");
  }
  // (4, B): starts, ends, skip begins, skip ends.
  auto column = [&](const torch::Tensor& t, int64_t fill, const char* name) {
    if (!t.defined()) return torch::full({B}, fill, torch::kLong);
    check(t.dim() == 1 && t.size(0) == B, std::string("causal_attention_cpu: ") + name + " must be (B)");
    return t.to(torch::kCPU, torch::kLong);
  };
  auto win = torch::stack({column(windows.start, 0, "start"), column(windows.end, T, "end"),
                           column(windows.skip_begin, 0, "skip_begin"), column(windows.skip_end, 0, "skip_end")})
                 .contiguous();
  const int64_t* w = win.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t st = w[b], en = w[B + b], sb = w[2 * B + b], se = w[3 * B + b];
    check(st >= 0 && en <= T && st <= en, "causal_attention_cpu: windows need 0 <= start <= end <= T");
    check(sb == se || (st <= sb && sb < se && se <= en),
          "causal_attention_cpu: a skipped span must lie inside the window, after its start");
  }
  return CausalAttentionFn::apply(qkv, c, s, win, H, Hkv);
}

}  // namespace rlhf
