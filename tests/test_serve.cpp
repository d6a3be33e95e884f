// The continuous-batching engine against the static-batch generator (the same tokens for
// requests that join a running batch at different steps), its streaming text rule, and the
// endpoint client (EndpointLlm) against our own server in this process.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <thread>

#include "apps/llm.h"
#include "core/error.h"
#include "generate/generator.h"
#include "model/model.h"
#include "serve/engine.h"
#include "serve/openai_server.h"
#include "test_util.h"

namespace rlhf {
namespace {

TEST(StablePrefix, HoldsBackSplitCharactersAndPossibleStops) {
  EXPECT_EQ(stable_prefix("hello", {}), 5u);
  EXPECT_EQ(stable_prefix("caf\xC3", {}), 3u);           // é missing its second byte
  EXPECT_EQ(stable_prefix("caf\xC3\xA9", {}), 5u);
  EXPECT_EQ(stable_prefix("a\xE2\x82", {}), 1u);         // € missing its last byte
  EXPECT_EQ(stable_prefix("the end.\n\nHu", {"\n\nHuman:"}), 8u);  // may become the stop string
  EXPECT_EQ(stable_prefix("the end.\n", {"\n\nHuman:"}), 8u);
  EXPECT_EQ(stable_prefix("the end.\nX", {"\n\nHuman:"}), 10u);   // cannot any more
  EXPECT_EQ(stable_prefix("ab", {"b", "abc"}), 0u);       // the longest possible start wins
}

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { lm_ = new LoadedModel(load_model(test::data_dir() / "stories260K" / "stories260K.gguf")); }
  static void TearDownTestSuite() { delete lm_; }
  static LoadedModel* lm_;

  struct Result {
    std::string text, finish;
    std::vector<int32_t> tokens;
    int events = 0;
  };

  // Submits a request whose events are gathered into `out` (one Result per choice).
  static std::shared_ptr<EngineRequest> request(const std::string& prompt, int64_t max_tokens, std::vector<Result>& out,
                                                std::atomic<int>& open, int n = 1, float temperature = 0) {
    auto r = std::make_shared<EngineRequest>();
    r->prompt = encode_prompt(*lm_->tokenizer, prompt);
    r->max_tokens = max_tokens;
    r->n = n;
    r->sampling.temperature = temperature;
    r->seed = 11;
    r->stop_ids = {lm_->tokenizer->eos_id()};
    out.assign(n, {});
    open += n;
    r->on_event = [&out, &open](const ChoiceEvent& ev) {
      auto& res = out[ev.index];
      res.text += ev.delta;
      if (ev.token >= 0) res.tokens.push_back(ev.token);
      ++res.events;
      if (!ev.finish_reason.empty()) {
        res.finish = ev.finish_reason;
        --open;
      }
    };
    return r;
  }

  static void wait(std::atomic<int>& open) {
    while (open > 0) std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
};
LoadedModel* EngineTest::lm_ = nullptr;

TEST_F(EngineTest, RequestsJoiningARunningBatchDecodeAsTheyWouldAlone) {
  const std::vector<std::string> prompts = {"Once upon a time", "Lily", "The little dog went to the big park with his mom",
                                            "Tom had a ball"};
  GenerateOptions opt;
  opt.max_new_tokens = 40;
  opt.sampling.temperature = 0;
  std::vector<Generation> alone;
  for (const auto& p : prompts)
    alone.push_back(generate(lm_->model, *lm_->tokenizer, {encode_prompt(*lm_->tokenizer, p)}, opt)[0]);

  Engine engine(lm_->model, *lm_->tokenizer, {.max_rows = 8});
  std::vector<std::vector<Result>> got(prompts.size());
  std::atomic<int> open{0};
  // Two start together; the others join a few steps later, one with a longer prompt than the
  // running batch's length (the batch shifts right) and one shorter (padded on the left).
  ASSERT_TRUE(engine.submit(request(prompts[0], 40, got[0], open)));
  ASSERT_TRUE(engine.submit(request(prompts[1], 40, got[1], open)));
  while (engine.stats().steps < 3) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(engine.submit(request(prompts[2], 40, got[2], open)));
  while (engine.stats().steps < 8) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(engine.submit(request(prompts[3], 40, got[3], open)));
  wait(open);
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE(prompts[i]);
    EXPECT_EQ(got[i][0].text, alone[i].text);
    EXPECT_EQ(got[i][0].tokens, alone[i].tokens);
    EXPECT_EQ(got[i][0].finish, alone[i].finish_reason == "eos" ? "stop" : alone[i].finish_reason);
  }
  EXPECT_GE(engine.stats().max_batch, 3);  // they did run together
}

TEST_F(EngineTest, ChoicesSampleTheGeneratorsSequencesAndCancelledRequestsLeave) {
  GenerateOptions opt;
  opt.max_new_tokens = 30;
  opt.sampling.temperature = 1;
  opt.seed = 11;
  const auto ids = encode_prompt(*lm_->tokenizer, "The sun");
  auto ref = generate(lm_->model, *lm_->tokenizer, {ids, ids, ids}, opt);

  Engine engine(lm_->model, *lm_->tokenizer, {.max_rows = 8});
  std::vector<Result> got, doomed;
  std::atomic<int> open{0}, doomed_open{0};
  auto victim = request("Once upon a time", 200, doomed, doomed_open);
  ASSERT_TRUE(engine.submit(victim));
  ASSERT_TRUE(engine.submit(request("The sun", 30, got, open, /*n=*/3, /*temperature=*/1)));
  while (doomed[0].events < 5) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  victim->cancelled = true;
  const int seen = doomed[0].events;
  wait(open);
  for (int j = 0; j < 3; ++j) EXPECT_EQ(got[j].tokens, ref[j].tokens) << "choice " << j;
  // The cancelled request got no more than the step in flight, and left the batch.
  EXPECT_LE(doomed[0].events, seen + 1);
  EXPECT_TRUE(doomed[0].finish.empty());
  while (engine.stats().requests < 2) std::this_thread::sleep_for(std::chrono::milliseconds(1));
}

TEST_F(EngineTest, EndpointClientGetsWhatTheLocalModelGives) {
  ServeOptions so;
  so.port = 0;
  OpenAiServer server(*lm_, "stories260K.gguf", so);
  const int port = server.start();
  const std::string url = "http://127.0.0.1:" + std::to_string(port) + "/v1";
  EndpointLlm remote(url, {.max_requests = 3});
  CompletionParams params;
  params.max_tokens = 24;
  params.stop = {"."};
  const std::vector<std::string> prompts = {"Once upon a time", "The little dog"};
  auto got = remote.complete(prompts, params);
  ASSERT_EQ(got.size(), 2u);
  GenerateOptions opt;
  opt.max_new_tokens = 24;
  opt.sampling.temperature = 0;
  opt.stop_strings = {"."};
  for (size_t i = 0; i < prompts.size(); ++i) {
    auto want = generate(lm_->model, *lm_->tokenizer, {encode_prompt(*lm_->tokenizer, prompts[i])}, opt)[0];
    EXPECT_EQ(got[i][0].text, want.text);
    EXPECT_EQ(got[i][0].finish_reason, want.finish_reason == "length" ? "length" : "stop");
  }
  // /v1/models once, then one request per prompt: the budget of 3 is spent.
  EXPECT_EQ(remote.requests_made(), 3);
  EXPECT_THROW(remote.complete({"x"}, params), Error);
  server.stop();
  // Nobody listening: an Error naming the URL after the retries.
  EndpointLlm gone(url, {.model = "m", .timeout_seconds = 2, .retries = 1});
  try {
    gone.complete({"x"}, params);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(url.substr(0, url.size() - 3)), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace rlhf

namespace rlhf {
namespace {

TEST_F(EngineTest, EndpointOptionLogprobsEqualTheLocalModelsWhereListed) {
  ServeOptions so;
  so.port = 0;
  OpenAiServer server(*lm_, "stories260K.gguf", so);
  const int port = server.start();
  EndpointLlm remote("http://127.0.0.1:" + std::to_string(port), {});
  LocalLlm local((test::data_dir() / "stories260K" / "stories260K.gguf").string());
  const std::vector<std::string> prompts = {"Once upon a time, there was a little", "The answer is: (", "Tom and Lily"};
  int listed = 0, single = 0;
  for (const auto& prompt : prompts) {
    // The candidates: letters, and the model's 3 likeliest next tokens as text.
    auto ids = encode_prompt(*lm_->tokenizer, prompt);
    std::vector<int64_t> seq(ids.begin(), ids.end());
    torch::NoGradGuard ng;
    auto logp = torch::log_softmax(lm_->model->forward(torch::tensor(seq).unsqueeze(0))[0][-1], -1);
    auto [top, top_ids] = logp.topk(20);
    const double twentieth = top.index({19}).item<double>();  // anything not listed is below it
    std::vector<std::string> words = {"A", "B"};
    for (int k = 0; k < 3; ++k) words.push_back(lm_->tokenizer->token_bytes(top_ids[k].item<int>()));
    auto got = remote.continuation_logprobs({prompt}, words);
    auto want = local.continuation_logprobs({prompt}, words);
    ASSERT_TRUE(got.has_value());
    ASSERT_TRUE(want.has_value());
    for (size_t c = 0; c < words.size(); ++c) {
      auto full = encode_prompt(*lm_->tokenizer, prompt + words[c]);
      if (full.size() != ids.size() + 1 || !std::equal(ids.begin(), ids.end(), full.begin())) continue;
      ++single;  // a one-token continuation: the endpoint's answer is exact
      if (std::isinf((*got)[0][c])) {
        EXPECT_LT((*want)[0][c], twentieth + 1e-4) << prompt << " / " << words[c];
      } else {
        ++listed;
        EXPECT_NEAR((*got)[0][c], (*want)[0][c], 1e-3) << prompt << " / " << words[c];
      }
    }
  }
  EXPECT_GE(single, 6);
  EXPECT_GE(listed, 6);
  server.stop();
}

}  // namespace
}  // namespace rlhf
