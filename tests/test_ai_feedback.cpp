// AI feedback mechanics with a scripted feedback model (fixed answers and log-probabilities):
// option probabilities, both orders averaged, the votes fallback, the chain-of-thought parse
// and clamp, soft rankings, and soft labels reaching the reward model's loss; then the exact
// option scoring of a real model in-process.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <thread>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/io.h"
#include "data/datasets.h"
#include "feedback/ai_feedback.h"
#include "generate/generator.h"
#include "losses/losses.h"
#include "model/reward_model.h"
#include "scripted_llm.h"
#include "test_util.h"
#include "trainers/reward_trainer.h"

using namespace rlhf;
using json = nlohmann::json;
using rlhf::test::ScriptedLlm;
using rlhf::test::TempDir;

namespace {

std::string stories_gguf() { return (test::data_dir() / "stories260K" / "stories260K.gguf").string(); }

Constitution one_principle() {
  Constitution c;
  c.name = "test";
  c.comparisons = {"Which response is kinder?"};
  return c;
}

// The text shown as option (A) / (B) in a comparison question.
std::string option_text(const std::string& q, const std::string& letter) {
  const std::string tag = "(" + letter + ") ";
  const size_t b = q.find(tag) + tag.size();
  return q.substr(b, q.find('\n', b) - b);
}

// A judge that likes "kind" but leans to (A): P(A) = 0.9 when (A) is kind, 0.3 when only
// (B) is, 0.6 when neither is.
std::shared_ptr<ScriptedLlm> biased_judge() {
  auto llm = std::make_shared<ScriptedLlm>();
  llm->logprobs = [](const std::string& q, const std::vector<std::string>& letters) -> std::optional<std::vector<double>> {
    EXPECT_EQ(letters, (std::vector<std::string>{"A", "B"}));
    const bool a_kind = option_text(q, "A").find("kind") != std::string::npos;
    const bool b_kind = option_text(q, "B").find("kind") != std::string::npos;
    const double pa = a_kind ? 0.9 : b_kind ? 0.3 : 0.6;
    return std::vector<double>{std::log(pa), std::log(1 - pa)};
  };
  return llm;
}

}  // namespace

TEST(AiFeedback, BothOrdersAreAskedAndAveragedSoAPositionBiasCancels) {
  auto llm = biased_judge();
  FeedbackModel fm(llm);
  std::mt19937_64 rng(1);
  auto j = judge_pairs(fm, one_principle(), {{"Tell me a story.", "a kind dog", "a rude cat"}}, rng);
  ASSERT_EQ(j.size(), 1u);
  EXPECT_NEAR(j[0].p_first_as_a, 0.9, 1e-12);
  EXPECT_NEAR(j[0].p_first_as_b, 0.7, 1e-12);  // shown as (B): P(B) = 1 - 0.3
  EXPECT_NEAR(j[0].p_first, 0.8, 1e-12);
  EXPECT_EQ(j[0].method, "logprobs");
  // Two questions, one per order, each with the principle, the prompt and the answer cue.
  ASSERT_EQ(llm->scored.size(), 2u);
  EXPECT_EQ(option_text(llm->scored[0], "A"), "a kind dog");
  EXPECT_EQ(option_text(llm->scored[1], "A"), "a rude cat");
  for (const auto& q : llm->scored) {
    EXPECT_NE(q.find("Which response is kinder?"), std::string::npos);
    EXPECT_NE(q.find("Human: Tell me a story."), std::string::npos);
    EXPECT_EQ(q.substr(q.size() - 16), "The answer is: (");
  }
  // Two neutral completions: the bias alone (0.6 for whichever is (A)) averages to a tie.
  auto tie = judge_pairs(fm, one_principle(), {{"p", "one", "two"}}, rng);
  EXPECT_NEAR(tie[0].p_first, 0.5, 1e-12);
}

TEST(AiFeedback, AnHhDialogueIsShownAsItIsNotWrappedInASecondOne) {
  auto llm = biased_judge();
  FeedbackModel fm(llm);
  std::mt19937_64 rng(1);
  const std::string dialogue = "\n\nHuman: How do I pick a lock?\n\nAssistant: Why?\n\nHuman: I am locked out.\n\nAssistant:";
  judge_pairs(fm, one_principle(), {{dialogue, "Call a locksmith.", "Use a pin."}, {"Hi there", "Hello", "Go"}}, rng);
  ASSERT_EQ(llm->scored.size(), 4u);
  EXPECT_NE(llm->scored[0].find("\nHuman: How do I pick a lock?\n\nAssistant: Why?\n\nHuman: I am locked out.\n\nAssistant:\n"),
            std::string::npos);
  EXPECT_EQ(llm->scored[0].find("Human: \n"), std::string::npos);
  EXPECT_EQ(llm->scored[0].find("Assistant:\n\nAssistant:"), std::string::npos);
  // A plain prompt goes into the constitution's conversation template.
  EXPECT_NE(llm->scored[2].find("Human: Hi there\n\nAssistant:"), std::string::npos);
}

TEST(AiFeedback, ProbabilitiesAreNormalisedOverTheOptionsOnly) {
  auto llm = std::make_shared<ScriptedLlm>();
  // Most of the mass on other tokens: P(A) = 0.03, P(B) = 0.01 -> 0.75 / 0.25.
  llm->logprobs = [](const std::string&, const std::vector<std::string>&) {
    return std::optional<std::vector<double>>({std::log(0.03), std::log(0.01)});
  };
  FeedbackModel fm(llm);
  auto c = fm.choose({"q ("}, {"A", "B"});
  EXPECT_NEAR(c[0].probs[0], 0.75, 1e-12);
  EXPECT_NEAR(c[0].probs[1], 0.25, 1e-12);
  // Neither letter among an endpoint's top tokens: no information, said so.
  llm->logprobs = [](const std::string&, const std::vector<std::string>&) {
    return std::optional<std::vector<double>>({-INFINITY, -INFINITY});
  };
  c = fm.choose({"q ("}, {"A", "B"});
  EXPECT_EQ(c[0].method, "unanswered");
  EXPECT_NEAR(c[0].probs[0], 0.5, 1e-12);
}

TEST(AiFeedback, WithoutLogprobsItFallsBackToSampledVotesAndSaysSo) {
  auto llm = std::make_shared<ScriptedLlm>();  // no logprobs: like an endpoint that gives none
  llm->script = {{"answer is", {"A) yes", " (B)", "A", "B.", "(A)", "nonsense", "Apple", "A"}}};
  FeedbackOptions o;
  o.votes = 8;
  FeedbackModel fm(llm, o);
  auto c = fm.choose({"The answer is: ("}, {"A", "B"});
  EXPECT_EQ(fm.last_method(), "votes");
  EXPECT_EQ(c[0].method, "votes");
  EXPECT_EQ(llm->last_params.n, 8);
  EXPECT_GT(llm->last_params.temperature, 0.0f);
  // Votes A: "A) yes", "A", "(A)", "A"; B: " (B)", "B."; "nonsense" and "Apple" are not votes.
  EXPECT_NEAR(c[0].probs[0], 4.0 / 6.0, 1e-12);
  EXPECT_NEAR(c[0].probs[1], 2.0 / 6.0, 1e-12);
  // Asking for log-probabilities only is an error with such a backend.
  FeedbackOptions strict;
  strict.method = "logprobs";
  FeedbackModel fm2(llm, strict);
  EXPECT_THROW(fm2.choose({"The answer is: ("}, {"A", "B"}), Error);
}

TEST(AiFeedback, ChainOfThoughtIsParsedAndClampedToTheBand) {
  auto llm = std::make_shared<ScriptedLlm>();
  llm->script = {{"first", {"Response (A) is rude, so (B) is better."}}, {"second", {"Both are fine, hard to say."}}};
  llm->logprobs = [](const std::string&, const std::vector<std::string>&) {
    return std::optional<std::vector<double>>({std::log(0.99), std::log(0.01)});
  };
  FeedbackOptions o;
  o.chain_of_thought = true;
  FeedbackModel fm(llm, o);
  auto c = fm.choose({"first question\n", "second question\n"}, {"A", "B"}, "Think:", "The answer is: (");
  // The last option the reasoning names wins, then 0/1 is clamped to 40/60.
  EXPECT_EQ(c[0].method, "cot");
  EXPECT_NEAR(c[0].probs[1], 0.6, 1e-12);
  EXPECT_NE(c[0].reasoning.find("(B) is better"), std::string::npos);
  // No answer in the reasoning: the letter's probabilities after it (0.99), clamped to 0.6.
  EXPECT_EQ(c[1].method, "cot");
  EXPECT_NEAR(c[1].probs[0], 0.6, 1e-12);
  ASSERT_EQ(llm->scored.size(), 1u);
  EXPECT_EQ(llm->scored[0], "second question\nThink:Both are fine, hard to say.\nThe answer is: (");
  // The reasoning prompt is the question plus the reasoning cue, decoded greedily.
  EXPECT_EQ(llm->calls[0][0], "first question\nThink:");
  EXPECT_EQ(llm->last_params.temperature, 0.0f);
}

TEST(AiFeedback, TheAiLabelerRanksKCompletionsWithSoftLabels) {
  auto llm = biased_judge();
  AiLabeler labeler(std::make_shared<FeedbackModel>(llm), one_principle(), 7);
  auto rankings = labeler.rank({{"Tell me a story.", {"a rude cat", "a kind dog", "a plain owl"}}});
  ASSERT_EQ(rankings.size(), 1u);
  const auto& rk = rankings[0];
  EXPECT_EQ(rk.labeler, "ai");
  EXPECT_EQ(llm->scored.size(), 6u);  // 3 pairs, both orders
  // kind vs others: 0.9 as (A), 0.7 as (B) -> 0.8; rude vs plain: neutral -> 0.5.
  const auto P = rk.extra["preference_probs"].get<std::vector<std::vector<double>>>();
  EXPECT_NEAR(P[1][0], 0.8, 1e-12);
  EXPECT_NEAR(P[0][1], 0.2, 1e-12);
  EXPECT_NEAR(P[1][2], 0.8, 1e-12);
  EXPECT_NEAR(P[0][2], 0.5, 1e-12);
  // Kind first; the other two tie.
  ASSERT_EQ(rk.tiers.size(), 2u);
  EXPECT_EQ(rk.tiers[0], std::vector<int>{1});
  EXPECT_EQ(rk.tiers[1], (std::vector<int>{0, 2}));
  // Through the rankings file, the pairs carry the soft labels.
  TempDir tmp;
  write_rankings(tmp / "r.jsonl", rankings);
  auto pairs = read_pairs(tmp / "r.jsonl", "auto");
  ASSERT_EQ(pairs.size(), 2u);
  for (const auto& p : pairs) {
    EXPECT_EQ(p.chosen, "a kind dog");
    EXPECT_NEAR(p.chosen_prob, 0.8, 1e-12);
  }
}

TEST(AiFeedback, MalformedSoftLabelsAreAnError) {
  TempDir tmp;
  write_file_atomic(tmp / "r.jsonl", R"({"prompt": "p", "completions": ["a", "b"], "ranking": [0, 1], "preference_probs": [[0.5, 1.5], [0.5, 0.5]]})" "\n");
  EXPECT_THROW(read_pairs(tmp / "r.jsonl", "auto"), Error);
  write_file_atomic(tmp / "p.jsonl", R"({"prompt": "p", "chosen": "a", "rejected": "b", "chosen_prob": "high"})" "\n");
  EXPECT_THROW(read_pairs(tmp / "p.jsonl", "auto"), Error);
  write_file_atomic(tmp / "p.jsonl", R"({"prompt": "p", "chosen": "a", "rejected": "b", "chosen_prob": 0.8})" "\n");
  EXPECT_NEAR(read_pairs(tmp / "p.jsonl", "auto")[0].chosen_prob, 0.8, 1e-12);
}

TEST(AiFeedback, SoftBradleyTerryLossMatchesTheHandComputedCrossEntropy) {
  auto rc = torch::tensor({1.0f, 0.2f}), rr = torch::tensor({0.5f, 0.7f}), t = torch::tensor({0.7f, 0.4f});
  auto sig = [](double x) { return 1 / (1 + std::exp(-x)); };
  const double want = -0.5 * (0.7 * std::log(sig(0.5)) + 0.3 * std::log(sig(-0.5)) + 0.4 * std::log(sig(-0.5)) +
                              0.6 * std::log(sig(0.5)));
  EXPECT_NEAR(reward_loss(rc, rr, {}, t).item<double>(), want, 1e-6);
  // Target 1 is the hard-label loss.
  EXPECT_NEAR(reward_loss(rc, rr, {}, torch::ones({2})).item<double>(), reward_loss(rc, rr).item<double>(), 1e-7);
}

TEST(AiFeedback, SoftLabelsReachTheRewardModelsTrainingLoss) {
  // One step at lr 0 over the whole set: the logged loss is the soft loss of the initial
  // reward model, recomputed here from its scores.
  TempDir tmp;
  std::vector<Ranking> rankings;
  const std::vector<std::vector<std::string>> texts = {{"Once upon a time", " there was a cat.", " the end"},
                                                       {"Lily went", " to the park.", " home and cried."}};
  for (const auto& t : texts)
    rankings.push_back({t[0], {t[1], t[2]}, {{0}, {1}}, "ai", json{{"preference_probs", {{0.5, 0.8}, {0.2, 0.5}}}}});
  rankings[1].extra["preference_probs"] = {{0.5, 0.65}, {0.35, 0.5}};
  write_rankings(tmp / "r.jsonl", rankings);
  RewardConfig rc;
  rc.train.model = stories_gguf();
  rc.train.train_data = (tmp / "r.jsonl").string();
  rc.train.run_dir = (tmp / "rm").string();
  rc.train.lr = 0;
  rc.train.batch_size = 2;
  rc.train.max_steps = 1;
  rc.norm_samples = 0;
  train_reward_model(rc, false);
  auto rm = load_reward_model((tmp / "rm" / "model").string());
  auto scores = score_texts(rm, {{texts[0][0], texts[0][1]}, {texts[0][0], texts[0][2]},
                                 {texts[1][0], texts[1][1]}, {texts[1][0], texts[1][2]}},
                            rc.train.max_length);
  auto soft = [](double d, double t) { return -(t * std::log(1 / (1 + std::exp(-d))) + (1 - t) * std::log(1 / (1 + std::exp(d)))); };
  const double want = 0.5 * (soft(scores[0] - scores[1], 0.8) + soft(scores[2] - scores[3], 0.65));
  std::ifstream log(tmp / "rm" / "metrics.jsonl");
  std::string line;
  double logged = NAN;
  while (std::getline(log, line)) {
    auto j = json::parse(line);
    if (j.contains("loss") && j.value("step", 0.0) == 1.0) logged = j["loss"].get<double>();
  }
  EXPECT_NEAR(logged, want, 1e-4);
  // And it is not the hard-label loss.
  const double hard = 0.5 * (soft(scores[0] - scores[1], 1) + soft(scores[2] - scores[3], 1));
  EXPECT_GT(std::abs(logged - hard), 1e-3);
}

TEST(AiFeedback, ALocalModelScoresOptionsExactlyAsItsNextTokenDistribution) {
  LocalLlm llm(stories_gguf());
  const std::string prompt = "Once upon a time, there was a little";
  auto lp = llm.continuation_logprobs({prompt}, {" girl", " dog"});
  ASSERT_TRUE(lp.has_value());
  // The same numbers from the generator's own logits: one greedy token with logprobs.
  auto& lm = llm.loaded();
  auto ids = encode_prompt(*lm.tokenizer, prompt);
  torch::NoGradGuard ng;
  std::vector<int64_t> seq(ids.begin(), ids.end());
  auto logp = torch::log_softmax(lm.model->forward(torch::tensor(seq).unsqueeze(0))[0][-1], -1);
  for (int c = 0; c < 2; ++c) {
    auto cont = encode_prompt(*lm.tokenizer, prompt + (c == 0 ? " girl" : " dog"));
    ASSERT_GT(cont.size(), ids.size());
    double want = logp[cont[ids.size()]].item<double>();
    // Multi-token continuations add the later tokens' log-probabilities.
    if (cont.size() > ids.size() + 1) {
      std::vector<int64_t> full(cont.begin(), cont.end());
      auto lp_full = torch::log_softmax(lm.model->forward(torch::tensor(full).unsqueeze(0))[0], -1);
      want = 0;
      for (size_t t = ids.size(); t < cont.size(); ++t) want += lp_full[t - 1][cont[t]].item<double>();
    }
    EXPECT_NEAR((*lp)[0][c], want, 1e-4);
  }
  EXPECT_GT((*lp)[0][0], (*lp)[0][1]);  // stories260K: "a little girl" over "a little dog"
}

TEST(AiFeedback, WilsonIntervalMatchesTheFormula) {
  auto [lo, hi] = wilson_interval(8, 10);
  EXPECT_NEAR(lo, 0.4901625, 1e-6);  // as statsmodels proportion_confint(8, 10, method="wilson")
  EXPECT_NEAR(hi, 0.9433178, 1e-6);
  auto [lo0, hi0] = wilson_interval(0, 20);
  EXPECT_EQ(lo0, 0.0);
  EXPECT_NEAR(hi0, 0.1611252, 1e-6);
}

namespace {

// A local OpenAI-compatible endpoint that misbehaves on purpose: `reply` decides each
// /v1/completions answer by the request's number (0, 1, ...).
class MisbehavingEndpoint {
 public:
  explicit MisbehavingEndpoint(std::function<void(int, const json&, httplib::Response&)> reply) : reply_(std::move(reply)) {
    server_.Get("/v1/models", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"object": "list", "data": [{"id": "judge"}]})", "application/json");
    });
    server_.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      reply_(calls++, json::parse(req.body), res);
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~MisbehavingEndpoint() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::atomic<int> calls{0};

 private:
  std::function<void(int, const json&, httplib::Response&)> reply_;
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
};

// A completions reply whose first token's top log-probabilities are `top`.
std::string logprobs_reply(const json& top) {
  return json{{"choices", {{{"index", 0}, {"text", "A"}, {"finish_reason", "length"},
                            {"logprobs", {{"tokens", {"A"}}, {"token_logprobs", {-0.1}}, {"top_logprobs", {top}}}}}}}}
      .dump();
}

}  // namespace

TEST(AiFeedbackEndpoint, ServerErrorsAreRetriedAndTheLettersReadFromTopLogprobs) {
  MisbehavingEndpoint ep([](int n, const json& req, httplib::Response& res) {
    if (n == 0) {
      res.status = 500;
      res.set_content("overloaded", "text/plain");
      return;
    }
    EXPECT_EQ(req["max_tokens"], 1);
    EXPECT_EQ(req["logprobs"], 20);
    res.set_content(logprobs_reply({{"A", std::log(0.3)}, {"B", std::log(0.1)}, {" the", std::log(0.5)}}), "application/json");
  });
  EndpointLlm llm(ep.url(), {.retries = 2});
  auto lp = llm.continuation_logprobs({"The answer is: ("}, {"A", "B", "C"});
  ASSERT_TRUE(lp.has_value());
  EXPECT_NEAR((*lp)[0][0], std::log(0.3), 1e-9);
  EXPECT_NEAR((*lp)[0][1], std::log(0.1), 1e-9);
  EXPECT_TRUE(std::isinf((*lp)[0][2]));  // not listed
  EXPECT_EQ(ep.calls.load(), 2);
  FeedbackModel fm(std::make_shared<EndpointLlm>(ep.url()));
  auto c = fm.choose({"q ("}, {"A", "B"});
  EXPECT_NEAR(c[0].probs[0], 0.75, 1e-9);
}

TEST(AiFeedbackEndpoint, MalformedJsonIsAClearError) {
  MisbehavingEndpoint ep([](int, const json&, httplib::Response& res) { res.set_content("{\"choices\": [", "application/json"); });
  EndpointLlm llm(ep.url(), {.retries = 0});
  try {
    llm.continuation_logprobs({"q ("}, {"A", "B"});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not JSON"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(ep.url()), std::string::npos) << e.what();
  }
}

TEST(AiFeedbackEndpoint, ASlowEndpointTimesOutAfterItsRetries) {
  MisbehavingEndpoint ep([](int, const json&, httplib::Response& res) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    res.set_content(logprobs_reply({{"A", -1.0}}), "application/json");
  });
  EndpointLlm llm(ep.url(), {.timeout_seconds = 0.2, .retries = 1});
  try {
    llm.continuation_logprobs({"q ("}, {"A", "B"});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("after 2 attempts"), std::string::npos) << e.what();
  }
  EXPECT_EQ(ep.calls.load(), 2);
}

TEST(AiFeedbackEndpoint, AnEndpointWithoutLogprobsGetsSampledVotes) {
  MisbehavingEndpoint ep([](int, const json& req, httplib::Response& res) {
    if (req.contains("logprobs")) {  // a server that ignores the field
      res.set_content(json{{"choices", {{{"index", 0}, {"text", "A"}, {"logprobs", nullptr}}}}}.dump(), "application/json");
      return;
    }
    json choices = json::array();
    for (int j = 0; j < req["n"].get<int>(); ++j) choices.push_back({{"index", j}, {"text", j % 4 == 0 ? "B)" : "A)"}});
    res.set_content(json{{"choices", choices}}.dump(), "application/json");
  });
  FeedbackOptions o;
  o.votes = 8;
  FeedbackModel fm(std::make_shared<EndpointLlm>(ep.url()), o);
  auto c = fm.choose({"q ("}, {"A", "B"});
  EXPECT_EQ(fm.last_method(), "votes");
  EXPECT_NEAR(c[0].probs[0], 6.0 / 8.0, 1e-9);
}

TEST(AiFeedbackEndpoint, AClientErrorIsNotRetried) {
  MisbehavingEndpoint ep([](int, const json&, httplib::Response& res) {
    res.status = 401;
    res.set_content(R"({"error": {"message": "bad key"}})", "application/json");
  });
  EndpointLlm llm(ep.url(), {.retries = 3});
  EXPECT_THROW(llm.continuation_logprobs({"q ("}, {"A", "B"}), Error);
  EXPECT_EQ(ep.calls.load(), 1);
}
