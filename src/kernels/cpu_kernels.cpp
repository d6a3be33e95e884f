#include "kernels/cpu_kernels.h"

#include <ATen/Parallel.h>

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

constexpr int64_t kLanes = 16;

RLHF_AVX512 inline __mmask16 tail_mask(int64_t j, int64_t n) {
  return n - j >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
}

// ---- RMSNorm -------------------------------------------------------------------------
// Rows [begin, end) of x (N, C): y = x r w with r = rsqrt(mean(x^2) + eps), saved per row.
RLHF_AVX512 void rms_forward_rows(const float* x, const float* w, float* y, float* r, int64_t begin, int64_t end,
                                  int64_t C, float eps) {
  for (int64_t n = begin; n < end; ++n) {
    const float* xr = x + n * C;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < C; j += kLanes) {
      const __m512 v = _mm512_maskz_loadu_ps(tail_mask(j, C), xr + j);
      acc = _mm512_fmadd_ps(v, v, acc);
    }
    const float rr = 1.0f / std::sqrt(_mm512_reduce_add_ps(acc) / static_cast<float>(C) + eps);
    r[n] = rr;
    const __m512 rv = _mm512_set1_ps(rr);
    for (int64_t j = 0; j < C; j += kLanes) {
      const __mmask16 m = tail_mask(j, C);
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr + j), rv), _mm512_maskz_loadu_ps(m, w + j));
      _mm512_mask_storeu_ps(y + n * C + j, m, v);
    }
  }
}

// dx = r (g - x r^2 mean(g x)) with g = dy w; dw += dy x r (into dw_acc, this thread's).
RLHF_AVX512 void rms_backward_rows(const float* x, const float* w, const float* r, const float* dy, float* dx,
                                   float* dw_acc, int64_t begin, int64_t end, int64_t C) {
  for (int64_t n = begin; n < end; ++n) {
    const float *xr = x + n * C, *gr = dy + n * C;
    __m512 acc = _mm512_setzero_ps();
    for (int64_t j = 0; j < C; j += kLanes) {
      const __mmask16 m = tail_mask(j, C);
      const __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, gr + j), _mm512_maskz_loadu_ps(m, w + j));
      acc = _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(m, xr + j), acc);
    }
    const float rr = r[n];
    const float c = rr * rr * _mm512_reduce_add_ps(acc) / static_cast<float>(C);
    const __m512 rv = _mm512_set1_ps(rr), cv = _mm512_set1_ps(c);
    for (int64_t j = 0; j < C; j += kLanes) {
      const __mmask16 m = tail_mask(j, C);
      const __m512 xv = _mm512_maskz_loadu_ps(m, xr + j), dyv = _mm512_maskz_loadu_ps(m, gr + j);
      const __m512 g = _mm512_mul_ps(dyv, _mm512_maskz_loadu_ps(m, w + j));
      _mm512_mask_storeu_ps(dx + n * C + j, m, _mm512_mul_ps(rv, _mm512_fnmadd_ps(xv, cv, g)));
      const __m512 dwv = _mm512_fmadd_ps(_mm512_mul_ps(dyv, xv), rv, _mm512_maskz_loadu_ps(m, dw_acc + j));
      _mm512_mask_storeu_ps(dw_acc + j, m, dwv);
    }
  }
}

struct RmsNormFn : torch::autograd::Function<RmsNormFn> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& x_in, const torch::Tensor& w_in,
                               double eps) {
    const auto x = x_in.contiguous(), w = w_in.contiguous();
    const int64_t C = x.size(-1), N = x.numel() / C;
    auto y = torch::empty_like(x);
    auto r = torch::empty({N}, x.options());
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
    float *yp = y.data_ptr<float>(), *rp = r.data_ptr<float>();
    at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
      const avx512::FlushDenormals flush;
      rms_forward_rows(xp, wp, yp, rp, b, e, C, static_cast<float>(eps)); });
    ctx->save_for_backward({x, w, r});
    return y;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1], &r = saved[2];
    const auto dy = grads[0].contiguous();
    const int64_t C = x.size(-1), N = x.numel() / C;
    auto dx = torch::empty_like(x);
    const int nthreads = at::get_num_threads();
    std::vector<float> dw_parts(static_cast<size_t>(nthreads) * C, 0.0f);
    const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *rp = r.data_ptr<float>(), *gp = dy.data_ptr<float>();
    float* dxp = dx.data_ptr<float>();
    at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
      const avx512::FlushDenormals flush;
      rms_backward_rows(xp, wp, rp, gp, dxp, dw_parts.data() + at::get_thread_num() * C, b, e, C);
    });
    auto dw = torch::zeros({C}, x.options());
    float* dwp = dw.data_ptr<float>();
    for (int t = 0; t < nthreads; ++t)
      for (int64_t j = 0; j < C; ++j) dwp[j] += dw_parts[t * C + j];
    return {dx, dw, torch::Tensor()};
  }
};

// ---- SwiGLU --------------------------------------------------------------------------
RLHF_AVX512 void swiglu_forward_rows(const float* h, float* out, int64_t begin, int64_t end, int64_t I) {
  for (int64_t n = begin; n < end; ++n) {
    const float *a = h + n * 2 * I, *b = a + I;
    for (int64_t j = 0; j < I; j += kLanes) {
      const __mmask16 m = tail_mask(j, I);
      const __m512 av = _mm512_maskz_loadu_ps(m, a + j);
      const __m512 silu = _mm512_mul_ps(av, avx512::sigmoid(av));
      _mm512_mask_storeu_ps(out + n * I + j, m, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(m, b + j)));
    }
  }
}

// d gate = dout up sig (1 + gate (1 - sig)); d up = dout silu(gate).
RLHF_AVX512 void swiglu_backward_rows(const float* h, const float* dout, float* dh, int64_t begin, int64_t end, int64_t I) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t n = begin; n < end; ++n) {
    const float *a = h + n * 2 * I, *b = a + I, *g = dout + n * I;
    float *da = dh + n * 2 * I, *db = da + I;
    for (int64_t j = 0; j < I; j += kLanes) {
      const __mmask16 m = tail_mask(j, I);
      const __m512 av = _mm512_maskz_loadu_ps(m, a + j), bv = _mm512_maskz_loadu_ps(m, b + j);
      const __m512 gv = _mm512_maskz_loadu_ps(m, g + j);
      const __m512 sig = avx512::sigmoid(av);
      const __m512 dsilu = _mm512_mul_ps(sig, _mm512_fmadd_ps(av, _mm512_sub_ps(one, sig), one));
      _mm512_mask_storeu_ps(da + j, m, _mm512_mul_ps(_mm512_mul_ps(gv, bv), dsilu));
      _mm512_mask_storeu_ps(db + j, m, _mm512_mul_ps(gv, _mm512_mul_ps(av, sig)));
    }
  }
}

struct SwigluFn : torch::autograd::Function<SwigluFn> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& h_in) {
    const auto h = h_in.contiguous();
    const int64_t I = h.size(-1) / 2, N = h.numel() / (2 * I);
    auto sizes = h.sizes().vec();
    sizes.back() = I;
    auto out = torch::empty(sizes, h.options());
    const float* hp = h.data_ptr<float>();
    float* op = out.data_ptr<float>();
    at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
      const avx512::FlushDenormals flush;
      swiglu_forward_rows(hp, op, b, e, I);
    });
    ctx->save_for_backward({h});
    return out;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const auto h = ctx->get_saved_variables()[0];
    const auto g = grads[0].contiguous();
    const int64_t I = h.size(-1) / 2, N = h.numel() / (2 * I);
    auto dh = torch::empty_like(h);
    const float *hp = h.data_ptr<float>(), *gp = g.data_ptr<float>();
    float* dp = dh.data_ptr<float>();
    at::parallel_for(0, N, 64, [&](int64_t b, int64_t e) {
      const avx512::FlushDenormals flush;
      swiglu_backward_rows(hp, gp, dp, b, e, I);
    });
    return {dh};
  }
};

}  // namespace

bool fused_cpu_kernels_apply(const torch::Tensor& x) {
  static const bool on = [] {
    const char* e = std::getenv("RLHF_FUSED");
    return !(e && std::strcmp(e, "0") == 0) && __builtin_cpu_supports("avx512f");
  }();
  return on && x.device().is_cpu() && x.scalar_type() == torch::kFloat32;
}

void flush_denormals_on_cpu_threads() {
  const char* e = std::getenv("RLHF_DENORMALS");
  if (e && std::strcmp(e, "keep") == 0) return;
  at::globalContext().setFlushDenormal(true);
#pragma omp parallel
  at::globalContext().setFlushDenormal(true);  // MXCSR is per thread: set it on each of the team
}

torch::Tensor fused_rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  check(fused_cpu_kernels_apply(x) && weight.scalar_type() == torch::kFloat32 && weight.numel() == x.size(-1),
        "fused_rms_norm: float32 CPU tensors (AVX-512) with a weight per channel");
  return RmsNormFn::apply(x, weight, eps);
}

torch::Tensor fused_swiglu(const torch::Tensor& gate_up) {
  check(fused_cpu_kernels_apply(gate_up) && gate_up.size(-1) % 2 == 0, "fused_swiglu: float32 CPU tensor (AVX-512) of even width");
  return SwigluFn::apply(gate_up);
}

}  // namespace rlhf
