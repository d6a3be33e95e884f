// Constitutions (the TOML format, its errors, the built-in default) and supervised CAI (`rlhf
// cai revise`): the prompts the model is shown, the principle draws, the SFT file and its
// mixing, empty revisions; then the command end to end with stories260K, feeding `rlhf sft`.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "apps/app_io.h"
#include "core/error.h"
#include "core/io.h"
#include "feedback/cai.h"
#include "feedback/constitution.h"
#include "feedback/redteam.h"
#include "apps/llm.h"
#include "test_util.h"

using namespace rlhf;
using json = nlohmann::json;
using rlhf::test::run_cli;
using rlhf::test::TempDir;

namespace {

std::vector<json> read_jsonl(const std::filesystem::path& p) {
  std::vector<json> out;
  std::istringstream in(read_file(p));
  for (std::string line; std::getline(in, line);) out.push_back(json::parse(line));
  return out;
}

// The error load_constitution gives for `text` ("" when it loads).
std::string load_error(const TempDir& tmp, const std::string& text) {
  write_file_atomic(tmp / "c.toml", text);
  try {
    load_constitution(tmp / "c.toml");
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

const char* kPrinciple = "[[principles]]\nname = \"p\"\ncritique = \"C\"\nrevision = \"R\"\n";

// Three principles with recognisable requests, one example tied to "b" and one not.
Constitution test_constitution() {
  Constitution c;
  c.source = "test";
  c.principles = {{"a", "CRIT-a", "REV-a"}, {"b", "CRIT-b", "REV-b"}, {"c", "CRIT-c", "REV-c"}};
  c.examples = {{"EX1-prompt", "EX1-response", "EX1-critique", "EX1-revision", "b"},
                {"EX2-prompt", "EX2-response", "EX2-critique", "EX2-revision", ""}};
  return c;
}

// Answers by the kind of request, read from how the prompt ends (few-shot examples put every
// marker inside a prompt, so a substring cannot tell them apart): the next critique after
// "Critique:", the next revision after "Revision:", else the next first reply.
struct RequestLlm : Llm {
  std::vector<std::string> responses, critiques, revisions;
  size_t used[3] = {0, 0, 0};
  std::vector<std::vector<std::string>> calls;  // the prompts of each complete() call
  CompletionParams last_params;
  std::set<uint64_t> seeds;  // of every call

  std::vector<std::vector<Completion>> complete(const std::vector<std::string>& prompts,
                                                const CompletionParams& params) override {
    calls.push_back(prompts);
    last_params = params;
    seeds.insert(params.seed);
    std::vector<std::vector<Completion>> out;
    for (const auto& p : prompts) {
      auto ends = [&](const std::string& s) { return p.size() >= s.size() && p.compare(p.size() - s.size(), s.size(), s) == 0; };
      const int kind = ends("Critique:") ? 1 : ends("Revision:") ? 2 : 0;
      const auto& replies = kind == 1 ? critiques : kind == 2 ? revisions : responses;
      out.push_back({{used[kind] < replies.size() ? replies[used[kind]++] : "(script ran out)", "stop", 1}});
    }
    return out;
  }
  std::optional<std::vector<std::vector<double>>> continuation_logprobs(const std::vector<std::string>&,
                                                                        const std::vector<std::string>&) override {
    return std::nullopt;
  }
  std::string describe() const override { return "scripted by request"; }
};

RequestLlm scripted(std::vector<std::string> responses, std::vector<std::string> critiques,
                    std::vector<std::string> revisions) {
  RequestLlm llm;
  llm.responses = std::move(responses);
  llm.critiques = std::move(critiques);
  llm.revisions = std::move(revisions);
  return llm;
}

}  // namespace

// ---- constitutions ---------------------------------------------------------------------

TEST(Constitution, TheBuiltInDefaultIsTheFileInTheRepository) {
  Constitution file = load_constitution(std::filesystem::path(RLHF_SOURCE_DIR) / "constitutions/default.toml");
  Constitution builtin = default_constitution();
  EXPECT_EQ(builtin.source, "builtin");
  file.source = builtin.source;
  EXPECT_TRUE(file == builtin) << "rebuild: the compiled-in constitution differs from constitutions/default.toml";
  EXPECT_TRUE(constitution_or_default("") == builtin);
  // The file spells out the templates; they are the struct's defaults too, so a file without
  // [templates] means the same format.
  const Constitution defaults;
  EXPECT_EQ(builtin.conversation, defaults.conversation);
  EXPECT_EQ(builtin.critique, defaults.critique);
  EXPECT_EQ(builtin.revision, defaults.revision);
  EXPECT_EQ(builtin.comparison, defaults.comparison);
  EXPECT_EQ(builtin.answer_cue, defaults.answer_cue);
  EXPECT_EQ(builtin.cot_cue, defaults.cot_cue);
  EXPECT_EQ(builtin.stop, defaults.stop);
  EXPECT_GE(builtin.principles.size(), 8u);
  EXPECT_GE(builtin.comparisons.size(), 6u);
  EXPECT_GE(builtin.examples.size(), 1u);
}

TEST(Constitution, AFileSetsItsFieldsAndMissingTemplatesKeepTheDefaults) {
  TempDir tmp;
  write_file_atomic(tmp / "mine.toml", R"(name = "mine"
[templates]
conversation = "USER: {prompt}\nBOT:"
stop = ["\nUSER:"]

[[principles]]
name = "kind"
critique = "Was it unkind?"
revision = "Make it kind."

[[comparisons]]
text = "Which is kinder?"

[[examples]]
prompt = "p"
response = "r"
critique = "c"
revision = "v"
principle = "kind"
)");
  auto c = load_constitution(tmp / "mine.toml");
  EXPECT_EQ(c.name, "mine");
  EXPECT_EQ(c.source, (tmp / "mine.toml").string());
  EXPECT_EQ(c.conversation, "USER: {prompt}\nBOT:");
  EXPECT_EQ(c.stop, std::vector<std::string>{"\nUSER:"});
  EXPECT_EQ(c.critique, Constitution{}.critique);  // not in the file
  ASSERT_EQ(c.principles.size(), 1u);
  EXPECT_TRUE((c.principles[0] == Principle{"kind", "Was it unkind?", "Make it kind."}));
  EXPECT_EQ(c.comparisons, std::vector<std::string>{"Which is kinder?"});
  ASSERT_EQ(c.examples.size(), 1u);
  EXPECT_TRUE((c.examples[0] == CritiqueExample{"p", "r", "c", "v", "kind"}));

  // Comparisons alone (an RLAIF-only constitution) are enough; the name defaults to the file's.
  write_file_atomic(tmp / "judge.toml", "[[comparisons]]\ntext = \"Which is better?\"\n");
  EXPECT_EQ(load_constitution(tmp / "judge.toml").name, "judge");
}

TEST(Constitution, ErrorsNameTheFileAndTheField) {
  TempDir tmp;
  const std::string file = (tmp / "c.toml").string();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"", "no principles and no comparisons"},
      {"principle = 1\n", "unknown key 'principle'"},
      {std::string(kPrinciple) + "weight = 2\n", "unknown key 'principles[0].weight'"},
      {"name = 3\n", "'name' must be a string"},
      {"[[principles]]\nname = \"p\"\ncritique = \"\"\nrevision = \"R\"\n", "'principles[0].critique' is empty"},
      {"[[principles]]\nname = \"p\"\ncritique = \"C\"\n", "'principles[0].revision' is missing"},
      {std::string(kPrinciple) + kPrinciple, "\"p\" is used twice"},
      {"principles = \"be nice\"\n", "'principles' must be an array of tables"},
      {"[[comparisons]]\ntext = 5\n", "'comparisons[0].text' must be a string"},
      {"[[comparisons]]\nwords = \"x\"\n", "unknown key 'comparisons[0].words'"},
      {std::string(kPrinciple) + "[templates]\ncomparison = \"{conversation} {principle} {a}\"\n",
       "'templates.comparison' lacks the placeholder {b}"},
      {std::string(kPrinciple) + "[templates]\ncritique = \"{conversation} {response}\"\n",
       "'templates.critique' lacks the placeholder {request}"},
      {std::string(kPrinciple) + "[templates]\nconversation = \"Q:\"\n", "'templates.conversation' lacks the placeholder {prompt}"},
      {std::string(kPrinciple) + "[templates]\nprefix = \"x\"\n", "unknown key 'templates.prefix'"},
      {std::string(kPrinciple) + "[templates]\nstop = [\"\"]\n", "'templates.stop' must hold non-empty strings"},
      {"templates = 1\n" + std::string(kPrinciple), "'templates' must be a table"},
      {std::string(kPrinciple) + "[[examples]]\nprompt = \"p\"\nresponse = \"r\"\ncritique = \"c\"\nrevision = \"v\"\nprinciple = \"q\"\n",
       "'examples[0].principle': no principle is named \"q\""},
      {std::string(kPrinciple) + "[[examples]]\nprompt = \"p\"\nresponse = \"r\"\ncritique = \"c\"\n",
       "'examples[0].revision' is missing"},
      {"name = \"unclosed\n", file + ":1:"},
  };
  for (const auto& [text, expected] : cases) {
    const std::string err = load_error(tmp, text);
    EXPECT_NE(err.find(file), std::string::npos) << text << "\n-> " << err;
    EXPECT_NE(err.find(expected), std::string::npos) << text << "\n-> " << err;
  }
  EXPECT_EQ(load_error(tmp, kPrinciple), "");
  // A field's error carries its line.
  EXPECT_NE(load_error(tmp, std::string(kPrinciple) + "\n\n[[comparisons]]\ntext = 5\n").find(file + ":8:"), std::string::npos);
  try {
    load_constitution(tmp / "missing.toml");
    ADD_FAILURE() << "a missing file loaded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.toml"), std::string::npos) << e.what();
  }
}

// ---- prompts and principle draws -------------------------------------------------------

TEST(Cai, CritiqueAndRevisionPromptsFillTheTemplates) {
  Constitution c = test_constitution();
  const auto& a = c.principles[0];
  const std::string bare = critique_prompt(c, a, "How?", "Like so.", /*few_shot=*/false);
  EXPECT_EQ(bare, "Human: How?\n\nAssistant: Like so.\n\nCritiqueRequest: CRIT-a\n\nCritique:");
  EXPECT_EQ(revision_prompt(c, a, bare, "Too terse."),
            bare + " Too terse.\n\nRevisionRequest: REV-a\n\nRevision:");

  // Few-shot: each example in the same shape, before the real request; the first with its own
  // principle's requests (b), the second with the drawn one's (a).
  const std::string shots = critique_prompt(c, a, "How?", "Like so.", /*few_shot=*/true);
  const std::string ex1 = "Human: EX1-prompt\n\nAssistant: EX1-response\n\nCritiqueRequest: CRIT-b\n\nCritique: EX1-critique"
                          "\n\nRevisionRequest: REV-b\n\nRevision: EX1-revision\n\n";
  const std::string ex2 = "Human: EX2-prompt\n\nAssistant: EX2-response\n\nCritiqueRequest: CRIT-a\n\nCritique: EX2-critique"
                          "\n\nRevisionRequest: REV-a\n\nRevision: EX2-revision\n\n";
  EXPECT_EQ(shots, ex1 + ex2 + bare);
}

TEST(Cai, PrincipleDrawsAreReproducibleAndVary) {
  const auto d = draw_principles(10, 50, /*seed=*/7, /*index=*/3);
  ASSERT_EQ(d.size(), 50u);
  EXPECT_EQ(d, draw_principles(10, 50, 7, 3));        // same seed and prompt: same draws
  EXPECT_NE(d, draw_principles(10, 50, 8, 3));        // another seed
  EXPECT_NE(d, draw_principles(10, 50, 7, 4));        // another prompt
  EXPECT_EQ(std::vector<size_t>(d.begin(), d.begin() + 5), draw_principles(10, 5, 7, 3));  // more rounds extend
  std::set<size_t> seen(d.begin(), d.end());
  EXPECT_GE(seen.size(), 7u) << "50 draws from 10 principles should reach most of them";
  for (size_t p : d) EXPECT_LT(p, 10u);
}

// ---- the loop with a scripted model ----------------------------------------------------

TEST(Cai, EachRoundRevisesTheLastRevisionUnderItsDrawnPrinciple) {
  Constitution c = test_constitution();
  CaiConfig cfg;
  cfg.rounds = 2;
  // A seed whose draws differ between the rounds and between the prompts, so that critiquing
  // under the wrong round's or the wrong prompt's principle shows.
  auto distinct = [&](int64_t seed) {
    auto d0 = draw_principles(3, 2, seed, 0), d1 = draw_principles(3, 2, seed, 1);
    return d0[0] != d0[1] && d1[0] != d1[1] && d0[0] != d1[0] && d0[1] != d1[1];
  };
  while (!distinct(cfg.seed)) ++cfg.seed;
  cfg.max_tokens = 33;
  cfg.temperature = 0.5;
  cfg.few_shot = true;
  auto llm = scripted({"R0", "S0"}, {"crit1-0", "crit1-1", "crit2-0", "crit2-1"}, {"rev1-0", "rev1-1", "rev2-0", "rev2-1"});
  auto t = critique_revise(llm, {"P0", "P1"}, c, cfg);

  // One batched call per step: replies, then critique and revision per round.
  ASSERT_EQ(llm.calls.size(), 5u);
  for (const auto& call : llm.calls) EXPECT_EQ(call.size(), 2u);
  EXPECT_EQ(llm.calls[0], (std::vector<std::string>{"Human: P0\n\nAssistant:", "Human: P1\n\nAssistant:"}));
  EXPECT_EQ(llm.last_params.stop, c.stop);
  EXPECT_EQ(llm.last_params.max_tokens, 33);
  EXPECT_FLOAT_EQ(llm.last_params.temperature, 0.5f);
  EXPECT_EQ(llm.seeds.size(), 5u);  // each call samples from streams of its own

  const std::vector<std::string> first = {"R0", "S0"};
  for (size_t i = 0; i < 2; ++i) {
    const auto drawn = draw_principles(c.principles.size(), 2, cfg.seed, i);
    ASSERT_EQ(t[i].rounds.size(), 2u);
    const std::string rev1 = "rev1-" + std::to_string(i), rev2 = "rev2-" + std::to_string(i);
    // Round 1 critiques the first reply, round 2 the first revision, each under its draw.
    const auto& p1 = c.principles[drawn[0]];
    const auto& p2 = c.principles[drawn[1]];
    const std::string crit1 = critique_prompt(c, p1, i ? "P1" : "P0", first[i], true);
    EXPECT_EQ(llm.calls[1][i], crit1);
    EXPECT_EQ(llm.calls[2][i], revision_prompt(c, p1, crit1, "crit1-" + std::to_string(i)));
    const std::string crit2 = critique_prompt(c, p2, i ? "P1" : "P0", rev1, true);
    EXPECT_EQ(llm.calls[3][i], crit2);
    EXPECT_NE(llm.calls[3][i].find("EX1-critique"), std::string::npos);  // the few-shot examples
    EXPECT_EQ(llm.calls[4][i], revision_prompt(c, p2, crit2, "crit2-" + std::to_string(i)));
    EXPECT_EQ(t[i].rounds[0].principle, p1.name);
    EXPECT_EQ(t[i].rounds[1].principle, p2.name);
    EXPECT_EQ(t[i].response, first[i]);
    EXPECT_EQ(t[i].final_response, rev2);
  }
}

TEST(Cai, EmptyRevisionsKeepThePreviousReplyAndUnrevisedPromptsStayOutOfTheSftFile) {
  TempDir tmp;
  write_file_atomic(tmp / "prompts.jsonl", "{\"prompt\": \"P0\"}\n{\"prompt\": \"P1\"}\n{\"prompt\": \"P2\"}\n");
  CaiConfig cfg;
  cfg.model = "scripted";
  cfg.prompts = (tmp / "prompts.jsonl").string();
  cfg.out_dir = (tmp / "out").string();
  cfg.rounds = 2;
  // P0: both revisions usable; P1: the second is blank (the first stays); P2: none usable.
  auto llm = scripted({"R0", "R1", "R2"}, {"c", "c", "c", "c", "c", "c"}, {"A0", "A1", " ", "B0", " \n ", ""});
  const CaiStats s = cai_revise(cfg, &llm);
  EXPECT_EQ(s.prompts, 3);
  EXPECT_EQ(s.revisions, 6);
  EXPECT_EQ(s.unusable_revisions, 3);
  EXPECT_EQ(s.unrevised_prompts, 1);
  EXPECT_EQ(s.sft_examples, 2);

  auto t = read_jsonl(tmp / "out" / "transcript.jsonl");
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t[0]["final"], "B0");
  EXPECT_EQ(t[1]["final"], "A1");
  EXPECT_EQ(t[1]["rounds"][1]["kept"], false);
  EXPECT_EQ(t[2]["final"], "R2");
  EXPECT_EQ(t[0]["response"], "R0");
  EXPECT_EQ(t[0]["rounds"][0]["critique"], "c");
  EXPECT_EQ(t[0]["rounds"][0]["revision"], "A0");
  // The round-2 critique of P1 was asked about its kept revision, not the blank one.
  EXPECT_NE(llm.calls[3][1].find("Assistant: A1\n\nCritiqueRequest:"), std::string::npos) << llm.calls[3][1];

  auto sft = read_jsonl(tmp / "out" / "sft.jsonl");
  ASSERT_EQ(sft.size(), 2u);
  EXPECT_EQ(sft[0]["prompt"], "Human: P0\n\nAssistant:");
  EXPECT_EQ(sft[0]["completion"], " B0");
  EXPECT_EQ(sft[1]["prompt"], "Human: P1\n\nAssistant:");
  EXPECT_EQ(sft[1]["completion"], " A1");
  EXPECT_NE(read_file(tmp / "out" / "config.toml").find("rounds = 2"), std::string::npos);
}

TEST(Cai, HelpfulDataIsMixedInAtTheRatioShuffledBySeed) {
  TempDir tmp;
  std::string prompts, helpful;
  for (int i = 0; i < 4; ++i) prompts += json{{"prompt", std::string("P").append(std::to_string(i))}}.dump() + "\n";
  for (int i = 0; i < 10; ++i) helpful += json{{"prompt", std::string("H").append(std::to_string(i))}, {"completion", " h"}}.dump() + "\n";
  write_file_atomic(tmp / "prompts.jsonl", prompts);
  write_file_atomic(tmp / "helpful.jsonl", helpful);
  auto run = [&](double ratio, int64_t seed) {
    CaiConfig cfg;
    cfg.model = "scripted";
    cfg.prompts = (tmp / "prompts.jsonl").string();
    cfg.out_dir = (tmp / "out").string();
    cfg.rounds = 1;
    cfg.seed = seed;
    cfg.helpful_data = (tmp / "helpful.jsonl").string();
    cfg.helpful_ratio = ratio;
    auto llm = scripted({"r", "r", "r", "r"}, {"c", "c", "c", "c"}, {"v", "v", "v", "v"});
    const CaiStats s = cai_revise(cfg, &llm);
    auto sft = read_jsonl(tmp / "out" / "sft.jsonl");
    EXPECT_EQ(s.sft_examples, 4);
    EXPECT_EQ(static_cast<size_t>(s.sft_examples + s.helpful_examples), sft.size());
    std::vector<std::string> order;
    size_t helpful_seen = 0;
    for (const auto& r : sft) {
      order.push_back(r["prompt"]);
      if (r["source"] == "helpful") {
        ++helpful_seen;
        EXPECT_EQ(r["completion"], " h");
      }
    }
    EXPECT_EQ(helpful_seen, static_cast<size_t>(s.helpful_examples));
    return std::make_pair(s.helpful_examples, order);
  };
  EXPECT_EQ(run(0.5, 1).first, 2);
  EXPECT_EQ(run(2.0, 1).first, 8);
  EXPECT_EQ(run(5.0, 1).first, 10);  // no more than there are
  EXPECT_EQ(run(0.0, 1).first, 0);
  EXPECT_EQ(run(2.0, 1).second, run(2.0, 1).second);  // reproducible
  EXPECT_NE(run(2.0, 1).second, run(2.0, 2).second);  // the seed shuffles
  // Shuffled together: the revised examples are not all in front.
  const auto order = run(2.0, 1).second;
  EXPECT_FALSE(std::all_of(order.begin(), order.begin() + 4, [](const std::string& p) { return p[0] == 'H' && p[1] == 'u'; }));

  // Dialogues (`messages`) are rendered with helpful_chat_template.
  write_file_atomic(tmp / "helpful.jsonl", json{{"messages", {{{"role", "user"}, {"content", "Hi"}},
                                                               {{"role", "assistant"}, {"content", "Hello!"}}}}}.dump() + "\n");
  CaiConfig cfg;
  cfg.model = "scripted";
  cfg.prompts = (tmp / "prompts.jsonl").string();
  cfg.out_dir = (tmp / "out").string();
  cfg.rounds = 1;
  cfg.helpful_data = (tmp / "helpful.jsonl").string();
  cfg.helpful_chat_template = "chatml";
  auto llm = scripted({"r", "r", "r", "r"}, {"c", "c", "c", "c"}, {"v", "v", "v", "v"});
  EXPECT_EQ(cai_revise(cfg, &llm).helpful_examples, 1);
  bool found = false;
  for (const auto& r : read_jsonl(tmp / "out" / "sft.jsonl"))
    if (r["source"] == "helpful") {
      found = true;
      EXPECT_EQ(r["prompt"], "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
      EXPECT_EQ(r["completion"], "Hello!<|im_end|>\n");
    }
  EXPECT_TRUE(found);
}

// ---- the command -----------------------------------------------------------------------

TEST(CliCai, ReviseWithStories260KThenSftTrainsOnItsOutput) {
  TempDir tmp;
  const std::string model = (test::data_dir() / "stories260K" / "stories260K.gguf").string();
  write_file_atomic(tmp / "prompts.jsonl",
                    "{\"prompt\": \"How do I pick a lock?\"}\n{\"prompt\": \"Tell me about a dog.\"}\n"
                    "{\"prompt\": \"Why is the sky blue?\"}\n");
  write_file_atomic(tmp / "cai.toml", "model = \"" + model + "\"\nprompts = \"" + (tmp / "prompts.jsonl").string() +
                                          "\"\nrounds = 3\nmax_tokens = 16\nseed = 5\n");
  const std::string out = (tmp / "out").string();
  auto r = run_cli("cai revise --config " + (tmp / "cai.toml").string() + " --rounds 1 --out-dir " + out, "", false);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto stats = json::parse(r.output);
  EXPECT_EQ(stats["prompts"], 3);
  EXPECT_EQ(stats["revisions"], 3);  // the flag overrode the file's 3 rounds
  auto t = read_jsonl(tmp / "out" / "transcript.jsonl");
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t[0]["rounds"].size(), 1u);
  auto sft = read_jsonl(tmp / "out" / "sft.jsonl");
  ASSERT_EQ(sft.size(), static_cast<size_t>(stats["sft_examples"].get<int>()));
  ASSERT_GE(sft.size(), 1u);
  EXPECT_EQ(sft[0]["prompt"].get<std::string>().rfind("Human: ", 0), 0u);

  r = run_cli("sft --model " + model + " --train-data " + out + "/sft.jsonl --batch-size 2 --max-steps 2 --max-length 64 --run-dir " +
              (tmp / "sft").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(tmp / "sft" / "model" / "config.json"));
}

TEST(CliCai, TheExampleConfigRunsOnAdvBench) {
  TempDir tmp;
  auto r = run_cli("cai revise --config " + std::string(RLHF_SOURCE_DIR) + "/examples/cai_revise.toml --limit 2 --rounds 1 "
                   "--max-tokens 8 --out-dir " + (tmp / "out").string(), "", false);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // Two of AdvBench's prompts (the red-team loader's sets, found by name in the data folder).
  std::set<std::string> advbench;
  for (const auto& p : read_prompt_set(test::data_dir() / "advbench/harmful_behaviors.csv")) advbench.insert(p.prompt);
  auto t = read_jsonl(tmp / "out" / "transcript.jsonl");
  ASSERT_EQ(t.size(), 2u);
  for (const auto& r : t) EXPECT_TRUE(advbench.contains(r["prompt"].get<std::string>())) << r["prompt"];
}

TEST(CliCai, BadInputIsAOneLineError) {
  TempDir tmp;
  const std::string model = (test::data_dir() / "stories260K" / "stories260K.gguf").string();
  write_file_atomic(tmp / "prompts.jsonl", "{\"prompt\": \"x\"}\n");
  write_file_atomic(tmp / "bad.toml", "[[principles]]\nname = \"p\"\n");
  const std::string base = "cai revise --model " + model + " --out-dir " + (tmp / "out").string();
  for (const auto& [args, expected] : std::vector<std::pair<std::string, std::string>>{
           {base + " --prompts " + (tmp / "prompts.jsonl").string() + " --rounds 0", "rounds must be at least 1"},
           {base + " --prompts " + (tmp / "missing.jsonl").string(), "missing.jsonl"},
           {base + " --prompts " + (tmp / "prompts.jsonl").string() + " --constitution " + (tmp / "bad.toml").string(),
            "'principles[0].critique' is missing"},
           {"cai revise --prompts " + (tmp / "prompts.jsonl").string(), "model is required"},
       }) {
    auto r = run_cli(args);
    EXPECT_EQ(r.exit_code, 1) << args << "\n" << r.output;
    EXPECT_EQ(r.output.rfind("rlhf: error: ", 0), 0u) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
    EXPECT_NE(r.output.find(expected), std::string::npos) << r.output;
  }
  EXPECT_FALSE(std::filesystem::exists(tmp / "out" / "sft.jsonl"));
}
