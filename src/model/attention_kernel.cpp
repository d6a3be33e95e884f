#include "model/attention_kernel.h"

#include <ATen/Parallel.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace rlhf {

namespace {

// The hot loops are compiled three times (AVX-512, AVX2, baseline x86-64) and the best one
// for the CPU is picked when the library loads (GCC function multi-versioning).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RLHF_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define RLHF_CLONES
#endif

// e^x for x <= 0 (softmax arguments), vectorizable: x = n ln2 + r with |r| <= ln2 / 2, e^r by
// its degree-6 Taylor polynomial (relative error < 2e-7), 2^n through the exponent bits.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;  // e^-87 ~ 1.6e-38: still a normal float
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  const float p =
      1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(bits);
}

// s[j] = scale * sum_d q[d] * kT[d][j], j < n (kT rows `ld` apart, already offset to the window).
RLHF_CLONES void row_scores(const float* q, const float* kT, int64_t ld, int64_t n, int64_t D, float scale, float* s) {
  for (int64_t j = 0; j < n; ++j) s[j] = 0.0f;
  for (int64_t d = 0; d < D; ++d) {
    const float qd = q[d] * scale;
    const float* kd = kT + d * ld;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) s[j] += qd * kd[j];
  }
}

// s[j] <- exp(s[j] - sub); returns the sum.
RLHF_CLONES float exp_sum(float* s, int64_t n, float sub) {
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    const float e = exp_nonpositive(s[j] - sub);
    s[j] = e;
    sum += e;
  }
  return sum;
}

RLHF_CLONES float row_max(const float* s, int64_t n) {
  float m = -INFINITY;
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

// out[d] = scale * sum_j w[j] * xT[d][j].
RLHF_CLONES void weighted_rows(const float* w, const float* xT, int64_t ld, int64_t n, int64_t D, float scale, float* out) {
  for (int64_t d = 0; d < D; ++d) {
    const float* xd = xT + d * ld;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < n; ++j) acc += w[j] * xd[j];
    out[d] = acc * scale;
  }
}

// The backward of one query row: p (probabilities) and dO come in; ds, dq out; dkT and dvT
// accumulate. dp[j] = dO . v_j; ds[j] = p[j] (dp[j] - delta); dq = scale sum_j ds[j] k_j;
// dk_j += scale ds[j] q; dv_j += p[j] dO.
RLHF_CLONES void row_backward(const float* q, const float* dO, float delta, const float* kT, const float* vT, int64_t ld,
                              int64_t n, int64_t D, float scale, const float* p, float* ds, float* dq, float* dkT,
                              float* dvT) {
  for (int64_t j = 0; j < n; ++j) ds[j] = 0.0f;
  for (int64_t d = 0; d < D; ++d) {
    const float g = dO[d];
    const float* vd = vT + d * ld;
    float* dvd = dvT + d * ld;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      ds[j] += g * vd[j];
      dvd[j] += p[j] * g;
    }
  }
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) ds[j] = p[j] * (ds[j] - delta);
  for (int64_t d = 0; d < D; ++d) {
    const float* kd = kT + d * ld;
    float* dkd = dkT + d * ld;
    const float qd = q[d] * scale;
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < n; ++j) {
      acc += ds[j] * kd[j];
      dkd[j] += qd * ds[j];
    }
    dq[d] = acc * scale;
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

// Copies head g of x (B, T, Hkv, D) for row b into xT (D, T).
void load_transposed(const View4& x, int64_t b, int64_t g, int64_t T, int64_t D, float* xT) {
  for (int64_t t = 0; t < T; ++t) {
    const float* src = x.at(b, t, g);
    for (int64_t d = 0; d < D; ++d) xT[d * T + t] = src[d];
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
  at::parallel_for(0, s.B * s.Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kT(s.D * s.T), vT(s.D * s.T), w(s.T);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.Hkv, g = task % s.Hkv;
      load_transposed(K, b, g, s.T, s.D, kT.data());
      load_transposed(V, b, g, s.T, s.D, vT.data());
      for (int64_t h = g * s.G; h < (g + 1) * s.G; ++h)
        for (int64_t i = 0; i < s.T; ++i) {
          const int64_t lo = i < st[b] ? i : st[b], n = i - lo + 1;
          row_scores(Q.at(b, i, h), kT.data() + lo, s.T, n, s.D, s.scale, w.data());
          const float m = row_max(w.data(), n);
          const float l = exp_sum(w.data(), n, m);
          weighted_rows(w.data(), vT.data() + lo, s.T, n, s.D, 1.0f / l, O + ((b * s.T + i) * s.H + h) * s.D);
          L[(b * s.H + h) * s.T + i] = m + std::log(l);
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
  at::parallel_for(0, s.B * s.Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kT(s.D * s.T), vT(s.D * s.T), dkT(s.D * s.T), dvT(s.D * s.T), p(s.T), ds(s.T);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / s.Hkv, g = task % s.Hkv;
      load_transposed(K, b, g, s.T, s.D, kT.data());
      load_transposed(V, b, g, s.T, s.D, vT.data());
      std::fill(dkT.begin(), dkT.end(), 0.0f);
      std::fill(dvT.begin(), dvT.end(), 0.0f);
      for (int64_t h = g * s.G; h < (g + 1) * s.G; ++h)
        for (int64_t i = 0; i < s.T; ++i) {
          const int64_t lo = i < st[b] ? i : st[b], n = i - lo + 1;
          const float* qi = Q.at(b, i, h);
          const float* gi = dO.at(b, i, h);
          const float* oi = O.at(b, i, h);
          float delta = 0.0f;  // rowsum(dO * O) = sum_j p_j dp_j
          for (int64_t d = 0; d < s.D; ++d) delta += gi[d] * oi[d];
          row_scores(qi, kT.data() + lo, s.T, n, s.D, s.scale, p.data());
          exp_sum(p.data(), n, L[(b * s.H + h) * s.T + i]);
          row_backward(qi, gi, delta, kT.data() + lo, vT.data() + lo, s.T, n, s.D, s.scale, p.data(), ds.data(),
                       DQ + ((b * s.T + i) * s.H + h) * s.D, dkT.data() + lo, dvT.data() + lo);
        }
      for (int64_t t = 0; t < s.T; ++t)
        for (int64_t d = 0; d < s.D; ++d) {
          DK[((b * s.T + t) * s.Hkv + g) * s.D + d] = dkT[d * s.T + t];
          DV[((b * s.T + t) * s.Hkv + g) * s.D + d] = dvT[d * s.T + t];
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

bool causal_attention_cpu_applies(const torch::Tensor& q) {
  static const bool disabled = [] {
    const char* e = std::getenv("RLHF_ATTENTION");
    return e && std::strcmp(e, "sdpa") == 0;
  }();
  return !disabled && q.device().is_cpu() && q.scalar_type() == torch::kFloat32;
}

torch::Tensor causal_attention_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   const torch::Tensor& start) {
  check(q.device().is_cpu() && q.scalar_type() == torch::kFloat32 && k.scalar_type() == torch::kFloat32 &&
            v.scalar_type() == torch::kFloat32,
        "causal_attention_cpu: float32 CPU tensors only");
  auto st = start.defined() ? start.to(torch::kCPU, torch::kLong).contiguous() : torch::zeros({q.size(0)}, torch::kLong);
  check(st.dim() == 1 && st.size(0) == q.size(0), "causal_attention_cpu: start must be (B)");
  return CausalAttentionFn::apply(q, k, v, st);
}

}  // namespace rlhf
