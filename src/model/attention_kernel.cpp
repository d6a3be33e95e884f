#include "model/attention_kernel.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace rlhf {

namespace {

constexpr int64_t kLanes = 16;      // one AVX-512 register of floats
constexpr int64_t kMaxHeadDim = 32;  // larger heads go to ATen's kernel, which is built for them

#define RLHF_AVX512 __attribute__((target("avx512f,fma")))

// e^x for x <= 0 (softmax arguments): x = n ln2 + r with |r| <= ln2 / 2, e^r by its degree-6
// Taylor polynomial (relative error < 2e-7), times 2^n by scalef.
RLHF_AVX512 inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  for (float c : {1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

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
    for (int64_t d = 0; d < D; ++d) acc = _mm512_fmadd_ps(qv[d], _mm512_loadu_ps(kT + d * ld + j0), acc);
    acc = _mm512_mask_mov_ps(neg_inf, lanes_in(j0, n), acc);
    _mm512_storeu_ps(s + j0, acc);
    mx = _mm512_max_ps(mx, acc);
  }
  const float m = _mm512_reduce_max_ps(mx);
  const __m512 mv = _mm512_set1_ps(m);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
    const __m512 e = _mm512_maskz_mov_ps(lanes_in(j0, n), exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + j0), mv)));
    sum = _mm512_add_ps(sum, e);
    for (int64_t d = 0; d < D; ++d) o[d] = _mm512_fmadd_ps(e, _mm512_loadu_ps(vT + d * ld + j0), o[d]);
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

// Copies head g of x (B, T, Hkv, D) for row b into xT (D, ld); columns T.. stay zero.
void load_transposed(const View4& x, int64_t b, int64_t g, int64_t T, int64_t D, int64_t ld, float* xT) {
  for (int64_t t = 0; t < T; ++t) {
    const float* src = x.at(b, t, g);
    for (int64_t d = 0; d < D; ++d) xT[d * ld + t] = src[d];
  }
}

struct Shapes {
  int64_t B, T, H, Hkv, D, G;
  float scale;
};

Shapes shapes_of(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  check(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "causal_attention_cpu: q, k, v must be (B, T, heads, D)");
  Shapes s{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), 0, 0.0f};
  check(k.sizes() == v.sizes() && k.size(0) == s.B && k.size(1) == s.T && k.size(3) == s.D && s.H % s.Hkv == 0,
        "causal_attention_cpu: k and v must be (B, T, H_kv, D) with H a multiple of H_kv");
  s.G = s.H / s.Hkv;
  s.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.D)));
  return s;
}

// Forward: out (B, T, H, D) and the log-sum-exp of every row (B, H, T).
std::pair<torch::Tensor, torch::Tensor> attention_forward(const torch::Tensor& q_in, const torch::Tensor& k_in,
                                                          const torch::Tensor& v_in, const torch::Tensor& start) {
  const auto q = d_contiguous(q_in), k = d_contiguous(k_in), v = d_contiguous(v_in);
  const Shapes s = shapes_of(q, k, v);
  auto out = torch::empty({s.B, s.T, s.H, s.D}, q.options());
  auto lse = torch::empty({s.B, s.H, s.T}, q.options());
  const View4 Q = view_of(q), K = view_of(k), V = view_of(v);
  const int64_t* st = start.data_ptr<int64_t>();
  float* O = out.data_ptr<float>();
  float* L = lse.data_ptr<float>();
  const auto [fwd, bwd] = row_kernels(s.D);
  const int64_t ld = s.T + kLanes;  // room for the last block of a window
  at::parallel_for(0, s.B * s.Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kT(s.D * ld, 0.0f), vT(s.D * ld, 0.0f), w(ld);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.Hkv, g = task % s.Hkv;
      load_transposed(K, b, g, s.T, s.D, ld, kT.data());
      load_transposed(V, b, g, s.T, s.D, ld, vT.data());
      for (int64_t h = g * s.G; h < (g + 1) * s.G; ++h)
        for (int64_t i = 0; i < s.T; ++i) {
          const int64_t lo = i < st[b] ? i : st[b];
          L[(b * s.H + h) * s.T + i] = fwd(Q.at(b, i, h), kT.data() + lo, vT.data() + lo, ld, i - lo + 1, s.D, s.scale,
                                           w.data(), O + ((b * s.T + i) * s.H + h) * s.D);
        }
    }
  });
  return {out, lse};
}

// Backward: dq, dk, dv from dout, recomputing the probabilities from the saved log-sum-exp.
std::vector<torch::Tensor> attention_backward(const torch::Tensor& dout_in, const torch::Tensor& q_in, const torch::Tensor& k_in,
                                              const torch::Tensor& v_in, const torch::Tensor& out, const torch::Tensor& lse,
                                              const torch::Tensor& start) {
  const auto q = d_contiguous(q_in), k = d_contiguous(k_in), v = d_contiguous(v_in), dout = d_contiguous(dout_in);
  const Shapes s = shapes_of(q, k, v);
  auto dq = torch::empty({s.B, s.T, s.H, s.D}, q.options());
  auto dk = torch::empty({s.B, s.T, s.Hkv, s.D}, q.options());
  auto dv = torch::empty({s.B, s.T, s.Hkv, s.D}, q.options());
  const View4 Q = view_of(q), K = view_of(k), V = view_of(v), dO = view_of(dout), O = view_of(out);
  const int64_t* st = start.data_ptr<int64_t>();
  const float* L = lse.data_ptr<float>();
  float *DQ = dq.data_ptr<float>(), *DK = dk.data_ptr<float>(), *DV = dv.data_ptr<float>();
  const auto [fwd, bwd] = row_kernels(s.D);
  const int64_t ld = s.T + kLanes;
  at::parallel_for(0, s.B * s.Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kT(s.D * ld, 0.0f), vT(s.D * ld, 0.0f), dkT(s.D * ld), dvT(s.D * ld);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.Hkv, g = task % s.Hkv;
      load_transposed(K, b, g, s.T, s.D, ld, kT.data());
      load_transposed(V, b, g, s.T, s.D, ld, vT.data());
      std::fill(dkT.begin(), dkT.end(), 0.0f);
      std::fill(dvT.begin(), dvT.end(), 0.0f);
      for (int64_t h = g * s.G; h < (g + 1) * s.G; ++h)
        for (int64_t i = 0; i < s.T; ++i) {
          const int64_t lo = i < st[b] ? i : st[b];
          const float* gi = dO.at(b, i, h);
          const float* oi = O.at(b, i, h);
          float delta = 0.0f;  // rowsum(dO * O) = sum_j p_j dp_j
          for (int64_t d = 0; d < s.D; ++d) delta += gi[d] * oi[d];
          bwd(Q.at(b, i, h), gi, delta, L[(b * s.H + h) * s.T + i], kT.data() + lo, vT.data() + lo, ld, i - lo + 1, s.D,
              s.scale, DQ + ((b * s.T + i) * s.H + h) * s.D, dkT.data() + lo, dvT.data() + lo);
        }
      for (int64_t t = 0; t < s.T; ++t)
        for (int64_t d = 0; d < s.D; ++d) {
          DK[((b * s.T + t) * s.Hkv + g) * s.D + d] = dkT[d * ld + t];
          DV[((b * s.T + t) * s.Hkv + g) * s.D + d] = dvT[d * ld + t];
        }
    }
  });
  return {dq, dk, dv};
}

struct CausalAttentionFn : torch::autograd::Function<CausalAttentionFn> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& start) {
    auto [out, lse] = attention_forward(q, k, v, start);
    ctx->save_for_backward({q, k, v, out, lse, start});
    return out;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto g = attention_backward(grads[0], saved[0], saved[1], saved[2], saved[3], saved[4], saved[5]);
    return {g[0], g[1], g[2], torch::Tensor()};
  }
};

}  // namespace

bool causal_attention_cpu_applies(const torch::Tensor& x, int64_t head_dim) {
  static const bool disabled = [] {
    const char* e = std::getenv("RLHF_ATTENTION");
    return e && std::strcmp(e, "sdpa") == 0;
  }();
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  return !disabled && avx512 && x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && head_dim <= kMaxHeadDim;
}

torch::Tensor causal_attention_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   const torch::Tensor& start) {
  check(q.device().is_cpu() && q.scalar_type() == torch::kFloat32 && k.scalar_type() == torch::kFloat32 &&
            v.scalar_type() == torch::kFloat32,
        "causal_attention_cpu: float32 CPU tensors only");
  check(q.dim() == 4 && q.size(3) <= kMaxHeadDim, "causal_attention_cpu: head size above " + std::to_string(kMaxHeadDim));
  check(__builtin_cpu_supports("avx512f"), "causal_attention_cpu: needs a CPU with AVX-512");
  auto st = start.defined() ? start.to(torch::kCPU, torch::kLong).contiguous() : torch::zeros({q.size(0)}, torch::kLong);
  check(st.dim() == 1 && st.size(0) == q.size(0), "causal_attention_cpu: start must be (B)");
  return CausalAttentionFn::apply(q, k, v, st);
}

}  // namespace rlhf
