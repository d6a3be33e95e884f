// Small AVX-512 helpers shared by our CPU kernels (functions carry their own target
// attribute; callers check __builtin_cpu_supports("avx512f") before using them).
#pragma once
#include <immintrin.h>

#define RLHF_AVX512 __attribute__((target("avx512f,fma")))

namespace rlhf::avx512 {

// Denormal floats (below 1.2e-38) flushed to zero, as inputs and results, on this thread
// while in scope: x86 handles them in microcode, ~100x slower per operation, and a training
// step's gradients are full of them (the attention backward of a reward model ran 3x
// slower for them). Flushing changes values only below 1.2e-38.
class FlushDenormals {
 public:
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved_); }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  unsigned saved_;
};

// e^x for x <= 0: x = n ln2 + r with |r| <= ln2 / 2, e^r by its degree-6 Taylor polynomial
// (relative error < 3e-7), times 2^n by scalef. Arguments below -87 give e^-87.
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

// The logistic function 1 / (1 + e^-x) for any x, through e^-|x| (never overflows).
RLHF_AVX512 inline __m512 sigmoid(__m512 x) {
  const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(x)));
  const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
  const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  return _mm512_mask_mul_ps(inv, neg, inv, e);  // x < 0: e / (1 + e)
}

}  // namespace rlhf::avx512
