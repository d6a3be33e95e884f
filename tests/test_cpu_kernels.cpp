// Our CPU kernels against their definitions in values and gradients: attention (explicit
// rotary, scores, mask, softmax), the model with it against the model with ATen's kernel,
// and the fused RMSNorm and SwiGLU against ATen's ops.
#include <gtest/gtest.h>
#include <immintrin.h>

#include "kernels/attention_kernel.h"
#include "kernels/cpu_kernels.h"
#include "model/model.h"
#include "test_util.h"

using namespace rlhf;

namespace {

torch::Tensor rotate_half(const torch::Tensor& x) {
  const int64_t h = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, h, h), x.narrow(-1, 0, h)}, -1);
}

// The definition: rotary embedding on queries and keys, then query i of row b sees keys
// start[b] <= j <= i, and itself.
torch::Tensor reference(const torch::Tensor& qkv, int64_t H, int64_t Hkv, const torch::Tensor& cos,
                        const torch::Tensor& sin, const torch::Tensor& start) {
  auto q = qkv.narrow(2, 0, H), k = qkv.narrow(2, H, Hkv), v = qkv.narrow(2, H + Hkv, Hkv);
  if (cos.defined()) {
    q = q * cos + rotate_half(q) * sin;
    k = k * cos + rotate_half(k) * sin;
  }
  const int64_t B = q.size(0), T = q.size(1), D = q.size(3);
  auto kk = k.repeat_interleave(H / Hkv, 2), vv = v.repeat_interleave(H / Hkv, 2);
  auto scores = torch::einsum("bihd,bjhd->bhij", {q, kk}) / std::sqrt(double(D));
  auto i = torch::arange(T).view({1, T, 1}), j = torch::arange(T).view({1, 1, T});
  auto allowed = ((j <= i) & (j >= start.view({B, 1, 1}))) | (j == i);  // (B, T, T)
  scores = scores.masked_fill(allowed.unsqueeze(1).logical_not(), -INFINITY);
  return torch::einsum("bhij,bjhd->bihd", {torch::softmax(scores, -1), vv});
}

struct Case {
  int64_t B, T, H, Hkv, D;
};

}  // namespace

// Our kernels need AVX-512; elsewhere the model runs ATen's (and these tests do not apply).
#define SKIP_WITHOUT_AVX512() \
  if (!causal_attention_cpu_applies(torch::zeros({1}), 8)) GTEST_SKIP() << "no AVX-512 on this CPU"

TEST(AttentionKernel, MatchesTheDefinitionInValueAndGradient) {
  SKIP_WITHOUT_AVX512();
  torch::manual_seed(0);
  for (const Case c : {Case{3, 37, 4, 2, 8}, Case{2, 65, 8, 8, 16}, Case{2, 19, 6, 2, 6}, Case{1, 1, 2, 1, 8},
                       Case{2, 40, 4, 1, 32}}) {
    for (const bool rotary : {true, false}) {
      SCOPED_TRACE("B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) + "/" +
                   std::to_string(c.Hkv) + " D=" + std::to_string(c.D) + (rotary ? " rotary" : ""));
      // A non-contiguous input, as the model's could be: every other row of a larger tensor.
      auto big = torch::randn({c.B, 2 * c.T, c.H + 2 * c.Hkv, c.D}, torch::requires_grad());
      auto qkv = big.slice(1, 0, 2 * c.T, 2);
      torch::Tensor cos, sin;
      if (rotary) {
        auto angles = torch::rand({c.B, c.T, 1, c.D / 2}) * 6;
        auto emb = torch::cat({angles, angles}, -1);
        cos = emb.cos(), sin = emb.sin();
      }
      auto start = torch::randint(0, std::max<int64_t>(1, c.T / 2), {c.B}, torch::kLong);
      start[0] = 0;
      auto out = causal_attention_cpu(qkv, c.H, c.Hkv, cos, sin, {.start = start});
      auto want = reference(qkv, c.H, c.Hkv, cos, sin, start);
      EXPECT_LT((out - want).abs().max().item<double>(), 1e-5);
      EXPECT_TRUE(out.is_contiguous());

      auto grad_out = torch::randn_like(out);
      auto g = torch::autograd::grad({out}, {big}, {grad_out})[0];
      auto g_ref = torch::autograd::grad({want}, {big}, {grad_out})[0];
      EXPECT_LT((g - g_ref).abs().max().item<double>(), 1e-4) << "largest gradient " << g_ref.abs().max().item<double>();
    }
  }
}

// Right padding (rows from `end` on give 0 and pass no gradient) and a skipped span (two
// completions after one prompt: rows after the span do not see it), against the definition
// with the same mask on the real rows.
TEST(AttentionKernel, EndsAndSkippedSpansMatchTheDefinition) {
  SKIP_WITHOUT_AVX512();
  torch::manual_seed(3);
  const int64_t B = 3, T = 41, H = 4, Hkv = 2, D = 8;
  auto qkv = torch::randn({B, T, H + 2 * Hkv, D}, torch::requires_grad());
  auto angles = torch::rand({B, T, 1, D / 2}) * 6;
  auto emb = torch::cat({angles, angles}, -1);
  auto cos = emb.cos(), sin = emb.sin();
  AttentionWindows w{torch::tensor({0, 0, 2}, torch::kLong), torch::tensor({41, 30, 38}, torch::kLong),
                     torch::tensor({0, 10, 5}, torch::kLong), torch::tensor({0, 22, 6}, torch::kLong)};
  auto out = causal_attention_cpu(qkv, H, Hkv, cos, sin, w);

  // The definition, with the skip in the mask.
  auto q = qkv.narrow(2, 0, H), k = qkv.narrow(2, H, Hkv), v = qkv.narrow(2, H + Hkv, Hkv);
  q = q * cos + rotate_half(q) * sin;
  k = k * cos + rotate_half(k) * sin;
  auto kk = k.repeat_interleave(H / Hkv, 2), vv = v.repeat_interleave(H / Hkv, 2);
  auto scores = torch::einsum("bihd,bjhd->bhij", {q, kk}) / std::sqrt(double(D));
  auto i = torch::arange(T).view({1, T, 1}), j = torch::arange(T).view({1, 1, T});
  auto view = [&](const torch::Tensor& t) { return t.view({B, 1, 1}); };
  auto skipped = (i >= view(w.skip_end)) & (j >= view(w.skip_begin)) & (j < view(w.skip_end));
  auto allowed = (((j <= i) & (j >= view(w.start))) | (j == i)) & ~skipped;
  scores = scores.masked_fill(allowed.unsqueeze(1).logical_not(), -INFINITY);
  auto want = torch::einsum("bhij,bjhd->bihd", {torch::softmax(scores, -1), vv});
  auto real = (torch::arange(T).view({1, T}) < w.end.view({B, 1})).to(torch::kFloat32).view({B, T, 1, 1});
  want = want * real;  // padding rows: 0

  EXPECT_LT((out - want).abs().max().item<double>(), 1e-5);
  EXPECT_EQ((out * (1 - real)).abs().max().item<float>(), 0.0f) << "padding rows give 0";
  auto grad_out = torch::randn_like(out);
  auto g = torch::autograd::grad({out}, {qkv}, {grad_out}, /*retain_graph=*/true)[0];
  auto g_ref = torch::autograd::grad({want}, {qkv}, {grad_out})[0];
  EXPECT_LT((g - g_ref).abs().max().item<double>(), 1e-4);
  // Row 1's rows after the span (22..29) do not depend on keys 10..21: their gradient there
  // comes from rows 10..21 only.
  auto g_after = torch::autograd::grad({out.narrow(0, 1, 1).narrow(1, 22, 8)}, {qkv},
                                       {grad_out.narrow(0, 1, 1).narrow(1, 22, 8)})[0];
  EXPECT_EQ(g_after[1].narrow(0, 10, 12).narrow(1, H, 2 * Hkv).abs().max().item<float>(), 0.0f);
  EXPECT_GT(g_after[1].narrow(0, 0, 10).narrow(1, H, 2 * Hkv).abs().max().item<float>(), 0.0f);
}

TEST(AttentionKernel, LongRowsStayAccurate) {
  SKIP_WITHOUT_AVX512();
  // Long windows and large logits: the softmax's max-shift and the exp approximation hold up.
  torch::manual_seed(1);
  auto qkv = torch::randn({1, 300, 4, 8}) * 4;
  qkv.narrow(2, 3, 1).div_(4);  // values of ordinary size
  auto start = torch::zeros({1}, torch::kLong);
  EXPECT_LT((causal_attention_cpu(qkv, 2, 1, {}, {}, {.start = start}) - reference(qkv, 2, 1, {}, {}, start)).abs().max().item<double>(),
            1e-5);
}

TEST(AttentionKernel, ModelMatchesAtenKernelOnPaddedBatches) {
  SKIP_WITHOUT_AVX512();
  // The same batch through the model with our kernel and with ATen's.
  auto m = load_model(test::data_dir() / "stories260K" / "stories260K.gguf");
  // Left padding (generation prefill, PPO rollouts), right padding (training), both, none.
  auto tokens = torch::randint(3, 500, {4, 24}, torch::kLong);
  auto mask = torch::ones({4, 24}, torch::kLong);
  mask[0].narrow(0, 0, 5).zero_();                                           // left
  mask[1].narrow(0, 18, 6).zero_();                                          // right
  mask[2].narrow(0, 0, 3).zero_(), mask[2].narrow(0, 20, 4).zero_();         // both
  auto positions = (mask.cumsum(1) - 1).clamp_min(0);
  // Logits and the gradient of a loss over real positions (as every trainer's), both ways.
  auto real = mask.to(torch::kFloat32).unsqueeze(-1);
  auto run = [&](const torch::Tensor& attn_mask) {
    for (auto& p : m.model->parameters()) p.mutable_grad() = torch::Tensor();
    auto logits = m.model->forward(tokens, positions, attn_mask);
    (torch::log_softmax(logits, -1) * real).narrow(0, 0, 3).sum().backward();
    std::vector<torch::Tensor> grads;
    for (auto& p : m.model->parameters()) grads.push_back(p.grad().clone());
    return std::make_pair(logits.detach(), grads);
  };
  const auto [ours, ours_grads] = run(mask);
  // ATen's kernel through the boolean-mask path: a mask with a hole is no window, so the
  // model falls back to it; rows 0..2 of that batch are unaffected by row 3's hole.
  auto holed = mask.clone();
  holed[3][10] = 0;
  const auto [theirs, their_grads] = run(holed);
  for (int b = 0; b < 3; ++b)
    for (int t = 0; t < 24; ++t) {
      if (mask[b][t].item<int64_t>() == 0) continue;  // padding rows may differ; they are unused
      EXPECT_LT((ours[b][t] - theirs[b][t]).abs().max().item<double>(), 1e-4) << "row " << b << " position " << t;
    }
  ASSERT_EQ(ours_grads.size(), their_grads.size());
  for (size_t i = 0; i < ours_grads.size(); ++i) {
    const double scale = their_grads[i].abs().max().item<double>();
    EXPECT_LT((ours_grads[i] - their_grads[i]).abs().max().item<double>(), 1e-4 * std::max(1.0, scale)) << "parameter " << i;
  }
}

// Skipped spans (two completions after one prompt) through the model: our kernel's windows
// against ATen's kernel with the mask the model builds for them.
TEST(AttentionKernel, ModelSkipMatchesTheMaskPath) {
  SKIP_WITHOUT_AVX512();
  auto m = load_model(test::data_dir() / "stories260K" / "stories260K.gguf");
  torch::NoGradGuard no_grad;
  auto tokens = torch::randint(3, 500, {3, 20}, torch::kLong);
  // Rows: prompt 6, first 7, second 7 (positions restart at 6); prompt 4, 8, 8; prompt 10, 5, 5.
  auto positions = torch::zeros({3, 20}, torch::kLong);
  const int64_t p[3] = {6, 4, 10}, c[3] = {7, 8, 5};
  for (int b = 0; b < 3; ++b)
    for (int t = 0; t < 20; ++t) positions[b][t] = t < p[b] + c[b] ? t : t - c[b];
  const KeySkip skip{torch::tensor({6, 4, 10}, torch::kLong), torch::tensor({13, 12, 15}, torch::kLong)};
  auto mask = torch::ones({3, 20}, torch::kLong);
  auto ours = m.model->hidden_states(tokens, positions, mask, nullptr, &skip);
  auto holed = mask.clone();
  holed[2][19] = 0, holed[2][18] = 0, holed[2][5] = 0;  // no single run: the model takes ATen's kernel with a mask
  auto theirs = m.model->hidden_states(tokens, positions, holed, nullptr, &skip);
  EXPECT_LT((ours.narrow(0, 0, 2) - theirs.narrow(0, 0, 2)).abs().max().item<double>(), 1e-4);
  // And the second completion does not see the first: changing the first's tokens leaves it.
  auto changed = tokens.clone();
  changed[0].narrow(0, 6, 7).fill_(7);
  auto again = m.model->hidden_states(changed, positions, mask, nullptr, &skip);
  EXPECT_LT((again[0].narrow(0, 13, 7) - ours[0].narrow(0, 13, 7)).abs().max().item<double>(), 1e-6);
  EXPECT_GT((again[0].narrow(0, 6, 7) - ours[0].narrow(0, 6, 7)).abs().max().item<double>(), 1e-3);
}

// Greedy decoding at head size 64 with grouped-query attention, left-padded prompts: our
// decoding kernel against ATen's route, taken when one more row's mask has a hole (no window);
// that row does not change the others.
TEST(AttentionKernel, GreedyDecodingAtHeadSize64MatchesAten) {
  SKIP_WITHOUT_AVX512();
  ModelConfig cfg;
  cfg.architecture = "LlamaForCausalLM";
  cfg.vocab_size = 97, cfg.hidden_size = 256, cfg.num_layers = 2, cfg.num_heads = 4, cfg.num_kv_heads = 2;
  cfg.head_dim = 64, cfg.intermediate_size = 256, cfg.max_position_embeddings = 128;
  ASSERT_TRUE(decode_step_cpu_applies(torch::zeros({1}), cfg.head_dim));
  torch::manual_seed(11);
  Transformer m(cfg);
  m->eval();
  torch::NoGradGuard no_grad;
  const int64_t T = 9, steps = 40;
  auto tokens = torch::randint(0, 97, {3, T}, torch::kLong);
  auto mask = torch::ones({3, T}, torch::kLong);
  mask[0].narrow(0, 0, 4).zero_();  // prompts of 5, 9 and (row 2, with a hole) 8 tokens
  mask[2][3] = 0;
  // Prefill, then greedy steps: the chosen tokens (B, steps) and each step's logits (B, steps, V).
  auto greedy = [&](int64_t B) {
    auto cache = KVCache::allocate(cfg, B, T + steps, torch::kFloat32);
    auto attn = mask.narrow(0, 0, B);
    auto last = m->forward(tokens.narrow(0, 0, B), positions_from_mask(attn), attn, &cache).select(1, T - 1);
    std::vector<torch::Tensor> chosen, logits;
    for (int64_t t = 0; t < steps; ++t) {
      auto next = last.argmax(-1, /*keepdim=*/true);  // (B, 1)
      chosen.push_back(next), logits.push_back(last);
      attn = torch::cat({attn, torch::ones({B, 1}, torch::kLong)}, 1);
      last = m->forward(next, positions_from_mask(attn).narrow(1, -1, 1), attn, &cache).select(1, 0);
    }
    return std::make_pair(torch::cat(chosen, 1), torch::stack(logits, 1));
  };
  const auto [ours, our_logits] = greedy(2);
  const auto [theirs, their_logits] = greedy(3);
  EXPECT_TRUE(torch::equal(ours, theirs.narrow(0, 0, 2)));
  EXPECT_LT((our_logits - their_logits.narrow(0, 0, 2)).abs().max().item<double>(), 1e-4)
      << "largest logit " << our_logits.abs().max().item<double>();
}

TEST(FusedKernels, RmsNormAndSwigluMatchAtenInValueAndGradient) {
  SKIP_WITHOUT_AVX512();
  torch::manual_seed(2);
  for (const int64_t C : {64, 37, 16}) {
    SCOPED_TRACE("C=" + std::to_string(C));
    auto x = torch::randn({3, 11, C}, torch::requires_grad());
    auto w = (torch::rand({C}) + 0.5).requires_grad_();
    auto y = fused_rms_norm(x, w, 1e-5), want = torch::rms_norm(x, {C}, w, 1e-5);
    EXPECT_LT((y - want).abs().max().item<double>(), 1e-5);
    auto g = torch::randn_like(y);
    auto ours = torch::autograd::grad({y}, {x, w}, {g}), theirs = torch::autograd::grad({want}, {x, w}, {g});
    EXPECT_LT((ours[0] - theirs[0]).abs().max().item<double>(), 1e-5);
    EXPECT_LT((ours[1] - theirs[1]).abs().max().item<double>(), 1e-4);

    // Gates over a wide range, both signs (the logistic through e^-|x|).
    auto h = (torch::randn({3, 11, 2 * C}) * 6).requires_grad_();
    auto s = fused_swiglu(h);
    auto parts = h.split(C, -1);
    auto s_ref = torch::silu(parts[0]) * parts[1];
    EXPECT_LT((s - s_ref).abs().max().item<double>(), 1e-4);
    auto gs = torch::randn_like(s);
    auto dh = torch::autograd::grad({s}, {h}, {gs})[0], dh_ref = torch::autograd::grad({s_ref}, {h}, {gs})[0];
    EXPECT_LT((dh - dh_ref).abs().max().item<double>(), 1e-4);
  }
}

// Head sizes small and large, one to nine query heads per K/V head (more than one pass of
// the scores), windows ending inside a block of sixteen keys, left padding of different
// lengths, a row of padding only. The cache past the new position holds NaN: never read.
TEST(AttentionKernel, DecodeStepMatchesTheDefinition) {
  SKIP_WITHOUT_AVX512();
  torch::manual_seed(3);
  const int64_t B = 4, cap = 120;
  for (const int64_t D : {8, 64, 128, 38})
    for (const auto [H, Hkv] : {std::pair<int64_t, int64_t>{4, 2}, {3, 3}, {6, 2}, {14, 2}, {9, 1}})
      for (const int64_t past : {0, 16, 37, 49, 100}) {
        SCOPED_TRACE("D=" + std::to_string(D) + " H=" + std::to_string(H) + "/" + std::to_string(Hkv) +
                     " past=" + std::to_string(past));
        const int64_t S = past + 1;
        auto qkv = torch::randn({B, 1, H + 2 * Hkv, D});
        auto angles = torch::rand({B, 1, 1, D / 2}) * 6;
        auto emb = torch::cat({angles, angles}, -1);
        auto cos = emb.cos(), sin = emb.sin();
        auto k = torch::randn({B, Hkv, D, cap}), v = torch::randn({B, Hkv, D, cap});
        k.narrow(3, S, cap - S).fill_(NAN), v.narrow(3, S, cap - S).fill_(NAN);
        auto k0 = k.clone(), v0 = v.clone();
        // Rows: no padding, 5 (or all but the new token) of left padding, padding only, 13.
        auto start = torch::tensor({int64_t(0), std::min<int64_t>(5, past), S + 3, std::min<int64_t>(13, past)},
                                   torch::kLong);
        auto out = decode_step_cpu(qkv, H, Hkv, cos, sin, k, v, past, start);
        // The cache gains the rotated key and the value at `past`, and nothing else changes.
        auto rot = [&](const torch::Tensor& x) { return x * cos + rotate_half(x) * sin; };
        auto q = rot(qkv.narrow(2, 0, H)), k_new = rot(qkv.narrow(2, H, Hkv)), v_new = qkv.narrow(2, H + Hkv, Hkv);
        EXPECT_LT((k.select(3, past) - k_new.squeeze(1)).abs().max().item<double>(), 1e-6);
        EXPECT_TRUE(torch::equal(v.select(3, past), v_new.squeeze(1)));
        EXPECT_TRUE(torch::equal(k.narrow(3, 0, past), k0.narrow(3, 0, past)));
        EXPECT_TRUE(torch::equal(v.narrow(3, 0, past), v0.narrow(3, 0, past)));
        auto want = torch::empty_like(out);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t h = 0; h < H; ++h) {
            const int64_t g = h / (H / Hkv), lo = std::min(start[b].item<int64_t>(), S - 1);
            auto keys = k[b][g].narrow(1, lo, S - lo), values = v[b][g].narrow(1, lo, S - lo);  // (D, n)
            auto p = torch::softmax(torch::matmul(q[b][0][h], keys) / std::sqrt(double(D)), -1);
            want[b][0][h] = torch::matmul(values, p);
          }
        EXPECT_LT((out - want).abs().max().item<double>(), 1e-5);
      }
}

// Denormals: our kernels flush them inside (and leave the caller's floating-point mode as it
// was); flush_denormals_on_cpu_threads flushes them for ATen's ops too.
TEST(FusedKernels, DenormalsFlushedInsideKernelsAndCallerModeKept) {
  SKIP_WITHOUT_AVX512();
  const unsigned before = _mm_getcsr();
  ASSERT_EQ(before & 0x8040u, 0u) << "the test process starts with denormals on";
  // A gradient of denormals through the SwiGLU backward: flushed inside, so the result is 0
  // where exact arithmetic would keep a denormal.
  auto h = torch::full({4, 32}, 1.0f).requires_grad_();
  auto y = fused_swiglu(h);
  auto g = torch::autograd::grad({y}, {h}, {torch::full({4, 16}, 1e-39f)})[0];
  EXPECT_EQ(g.abs().max().item<float>(), 0.0f);
  auto exact = (g.new_full({1}, 1e-39f) * 1.0f).item<float>();  // the caller still computes denormals
  EXPECT_GT(exact, 0.0f);
  EXPECT_EQ(_mm_getcsr() & ~0x3Fu, before & ~0x3Fu);  // control bits (not the sticky status flags)

  flush_denormals_on_cpu_threads();
  EXPECT_EQ(_mm_getcsr() & 0x8040u, 0x8040u);
  EXPECT_EQ((torch::full({1}, 1e-30f) * 1e-10f).item<float>(), 0.0f);  // ATen's own op, on this thread
  _mm_setcsr(before);
}
