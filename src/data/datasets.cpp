// JSONL readers for SFT, preference and ranking files, the ranking writer, and the two
// conversions trainers need (rankings -> pairs, HH dialogues -> prompt/chosen/rejected).
#include "data/datasets.h"

#include <algorithm>
#include <functional>
#include <optional>
#include <string_view>

#include "core/error.h"
#include "core/io.h"
#include "core/utf8.h"
#include "tokenizer/chat_template.h"

namespace rlhf {
namespace {

using nlohmann::json;

constexpr std::string_view kAssistantMarker = "\n\nAssistant:";

// A record the reader can skip (skip_bad) or report as "<file>:<line>: <what> (field ...)".
// Anything else (an Error) is about the whole run, e.g. a missing chat template, and is
// never skipped.
struct BadRecord {
  std::string what;
  std::string field;  // empty when the problem is the line as a whole
};

const json& field_of(const json& obj, const char* name) {
  auto it = obj.find(name);
  if (it == obj.end()) throw BadRecord{"missing field", name};
  return *it;
}

std::string string_field(const json& obj, const char* name) {
  const json& v = field_of(obj, name);
  if (!v.is_string()) throw BadRecord{std::string("expected a string, got ") + v.type_name(), name};
  return v.get<std::string>();
}

// Both the public split_hh_pair (Error) and read_preferences (BadRecord) use this.
std::optional<PreferencePair> try_split_hh(const std::string& chosen, const std::string& rejected) {
  const size_t common =
      std::mismatch(chosen.begin(), chosen.end(), rejected.begin(), rejected.end()).first - chosen.begin();
  // The last marker that lies wholly inside the shared prefix: the two responses may begin
  // with the same words, so the shared prefix can run past the marker.
  const size_t at = std::string_view(chosen).substr(0, common).rfind(kAssistantMarker);
  if (at == std::string_view::npos) return std::nullopt;
  const size_t cut = at + kAssistantMarker.size();
  return PreferencePair{chosen.substr(0, cut), chosen.substr(cut), rejected.substr(cut)};
}

// Calls `parse` on every non-empty line of a JSONL file (plain or gzip) and collects the
// results. A BadRecord becomes "<file>:<line>: ..." (or is counted, with skip_bad).
template <typename T>
std::vector<T> read_jsonl(const std::filesystem::path& path, const ReadOptions& opt, ReadStats* stats,
                          const std::function<T(const json&, const std::string& where)>& parse) {
  const std::string text = read_maybe_gzip(path);
  ReadStats local;
  std::vector<T> out;
  size_t line_no = 0;
  for (size_t begin = 0; begin < text.size();) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + begin, end - begin);
    begin = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    ++local.lines;
    const std::string where = path.string() + ":" + std::to_string(line_no);
    try {
      json record;
      try {
        record = json::parse(line);
      } catch (const json::parse_error& e) {
        const std::string msg = e.what();  // "[json.exception.parse_error.101] parse error at ..."
        throw BadRecord{"invalid JSON: " + msg.substr(msg.find(']') + 2), ""};
      }
      if (!record.is_object()) throw BadRecord{std::string("expected a JSON object, got ") + record.type_name(), ""};
      out.push_back(parse(record, where));
    } catch (const BadRecord& bad) {
      if (!opt.skip_bad)
        throw Error(where + ": " + bad.what + (bad.field.empty() ? "" : " (field '" + bad.field + "')"));
      ++local.skipped;
    }
  }
  if (stats) *stats = local;
  check(!out.empty(), path.string() + ": no records" +
                          (local.skipped ? " (" + std::to_string(local.skipped) + " malformed lines skipped)" : ""));
  return out;
}

SftExample sft_from_messages(const json& messages, const std::string& chat_template, const std::string& where) {
  if (!messages.is_array()) throw BadRecord{std::string("expected an array, got ") + messages.type_name(), "messages"};
  if (chat_template.empty()) {
    std::string names;
    for (const auto& n : chat_template_names()) names += (names.empty() ? "" : ", ") + n;
    throw Error(where + ": 'messages' needs a chat template to become prompt and completion; pass one (" + names +
                ") (field 'messages')");
  }
  std::vector<ChatMessage> conversation;
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string field = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw BadRecord{"expected an object with role and content", field};
    auto text = [&](const char* key) {
      auto it = m.find(key);
      if (it == m.end() || !it->is_string()) throw BadRecord{std::string("expected a string ") + key, field + "." + key};
      return it->get<std::string>();
    };
    conversation.push_back({text("role"), text("content")});
  }
  if (conversation.empty() || conversation.back().role != "assistant")
    throw BadRecord{"the last message must be the assistant's (it is the completion)", "messages"};
  // As TRL does for conversational prompt-completion data: the completion is what the
  // template adds for the last reply, markup included (" " before it in hh, "<|im_end|>\n"
  // after it in chatml, " </s>" in llama2), so the model learns to end its turn.
  try {
    std::string prompt = apply_chat_template(chat_template, {conversation.begin(), conversation.end() - 1}, true);
    std::string full = apply_chat_template(chat_template, conversation, false);
    if (full.compare(0, prompt.size(), prompt) != 0)
      throw BadRecord{"template '" + chat_template + "' does not render the prompt as a prefix of the dialogue",
                      "messages"};
    std::string completion = full.substr(prompt.size());
    return {std::move(prompt), std::move(completion)};
  } catch (const Error& e) {  // the template rejects this conversation (roles out of order)
    throw BadRecord{e.what(), "messages"};
  }
}

// Reads `ranking`: indices best first, inner lists tie groups; must cover 0..k-1 once each.
std::vector<std::vector<int>> parse_tiers(const json& ranking, size_t k) {
  if (!ranking.is_array()) throw BadRecord{std::string("expected an array, got ") + ranking.type_name(), "ranking"};
  std::vector<std::vector<int>> tiers;
  std::vector<bool> seen(k, false);
  size_t count = 0;
  auto take = [&](const json& v, std::vector<int>& tier) {
    if (!v.is_number_integer())
      throw BadRecord{std::string("expected completion indices (integers or lists of them), got ") + v.type_name(),
                      "ranking"};
    const int64_t i = v.get<int64_t>();
    if (i < 0 || i >= static_cast<int64_t>(k))
      throw BadRecord{"index " + std::to_string(i) + " out of range 0.." + std::to_string(k - 1), "ranking"};
    if (seen[i]) throw BadRecord{"index " + std::to_string(i) + " appears twice", "ranking"};
    seen[i] = true;
    ++count;
    tier.push_back(static_cast<int>(i));
  };
  for (const json& entry : ranking) {
    std::vector<int> tier;
    if (entry.is_array()) {
      if (entry.empty()) throw BadRecord{"empty tie group", "ranking"};
      for (const json& v : entry) take(v, tier);
    } else {
      take(entry, tier);
    }
    tiers.push_back(std::move(tier));
  }
  if (count != k)
    throw BadRecord{"ranks " + std::to_string(count) + " completions but there are " + std::to_string(k) +
                        " (it must order every completion once)",
                    "ranking"};
  return tiers;
}

}  // namespace

PreferencePair split_hh_pair(const std::string& chosen, const std::string& rejected, const std::string& where) {
  auto pair = try_split_hh(chosen, rejected);
  check(pair.has_value(),
        where + ": chosen and rejected share no prefix ending in \"\\n\\nAssistant:\" (HH-RLHF dialogues expected)");
  return *pair;
}

std::vector<SftExample> read_sft(const std::filesystem::path& path, const ReadOptions& opt,
                                 const std::string& chat_template, ReadStats* stats) {
  if (!chat_template.empty()) apply_chat_template(chat_template, {}, false);  // unknown name: fail before reading
  return read_jsonl<SftExample>(path, opt, stats, [&](const json& r, const std::string& where) {
    if (r.contains("messages")) return sft_from_messages(r["messages"], chat_template, where);
    return SftExample{string_field(r, "prompt"), string_field(r, "completion")};
  });
}

std::vector<std::string> read_prompts(const std::filesystem::path& path, const ReadOptions& opt, ReadStats* stats) {
  return read_jsonl<std::string>(path, opt, stats,
                                 [&](const json& r, const std::string&) { return string_field(r, "prompt"); });
}

std::vector<PromptRow> read_prompt_rows(const std::filesystem::path& path, const ReadOptions& opt, ReadStats* stats) {
  return read_jsonl<PromptRow>(path, opt, stats, [&](const json& r, const std::string& where) {
    return PromptRow{string_field(r, "prompt"), r, where};
  });
}

std::vector<PreferencePair> read_preferences(const std::filesystem::path& path, const ReadOptions& opt,
                                             ReadStats* stats) {
  return read_jsonl<PreferencePair>(path, opt, stats, [](const json& r, const std::string&) {
    std::string chosen = string_field(r, "chosen"), rejected = string_field(r, "rejected");
    PreferencePair pair;
    if (r.contains("prompt")) {
      pair = {string_field(r, "prompt"), std::move(chosen), std::move(rejected)};
    } else {
      auto split = try_split_hh(chosen, rejected);
      if (!split)
        throw BadRecord{"no 'prompt', and chosen/rejected share no prefix ending in \"\\n\\nAssistant:\"", "chosen"};
      pair = std::move(*split);
    }
    if (auto it = r.find("margin"); it != r.end()) {
      if (!it->is_number()) throw BadRecord{std::string("expected a number, got ") + it->type_name(), "margin"};
      pair.margin = it->get<double>();
    }
    if (auto it = r.find("chosen_prob"); it != r.end()) {
      if (!it->is_number() || !(it->get<double>() >= 0.0 && it->get<double>() <= 1.0))
        throw BadRecord{"expected a probability in [0, 1], got " + it->dump(), "chosen_prob"};
      pair.chosen_prob = it->get<double>();
    }
    return pair;
  });
}

std::vector<Ranking> read_rankings(const std::filesystem::path& path, const ReadOptions& opt, ReadStats* stats) {
  return read_jsonl<Ranking>(path, opt, stats, [](const json& r, const std::string&) {
    Ranking rk;
    rk.prompt = string_field(r, "prompt");
    const json& completions = field_of(r, "completions");
    if (!completions.is_array())
      throw BadRecord{std::string("expected an array of strings, got ") + completions.type_name(), "completions"};
    for (size_t i = 0; i < completions.size(); ++i) {
      if (!completions[i].is_string())
        throw BadRecord{std::string("expected a string, got ") + completions[i].type_name(),
                        "completions[" + std::to_string(i) + "]"};
      rk.completions.push_back(completions[i].get<std::string>());
    }
    if (rk.completions.size() < 2)
      throw BadRecord{"a ranking needs at least 2 completions, got " + std::to_string(rk.completions.size()),
                      "completions"};
    rk.tiers = parse_tiers(field_of(r, "ranking"), rk.completions.size());
    if (r.contains("labeler")) rk.labeler = string_field(r, "labeler");
    // The labeling store's id of the prompt (kept as an extra field): an integer or nothing.
    if (auto it = r.find("prompt_id"); it != r.end() && !it->is_null() && !it->is_number_integer())
      throw BadRecord{"expected an integer id, got " + it->dump(), "prompt_id"};
    for (const auto& [key, value] : r.items())
      if (key != "prompt" && key != "completions" && key != "ranking" && key != "labeler") rk.extra[key] = value;
    return rk;
  });
}

void write_rankings(const std::filesystem::path& path, const std::vector<Ranking>& rankings) {
  write_file_atomic(path, [&](std::ostream& out) {
    for (const Ranking& rk : rankings) {
      json r = rk.extra.is_object() ? rk.extra : json::object();
      r["prompt"] = rk.prompt;
      r["completions"] = rk.completions;
      json ranking = json::array();
      for (const auto& tier : rk.tiers) ranking.push_back(tier.size() == 1 ? json(tier[0]) : json(tier));
      r["ranking"] = std::move(ranking);
      if (!rk.labeler.empty()) r["labeler"] = rk.labeler;
      // Generations can hold invalid UTF-8 (decode is byte-exact); JSON cannot, so such
      // bytes become U+FFFD rather than losing the whole file of labels.
      out << dump_json(r) << '\n';
    }
  });
}

std::vector<PreferencePair> read_pairs(const std::filesystem::path& path, const std::string& format,
                                       const ReadOptions& opt) {
  std::string f = format;
  if (f == "auto") {
    // A rankings file has "completions" on its lines; look at the first record.
    auto text = read_maybe_gzip(path);
    auto first = text.substr(0, text.find('\n'));
    f = first.find("\"completions\"") != std::string::npos ? "rankings" : "preferences";
  }
  if (f == "rankings") return rankings_to_pairs(read_rankings(path, opt));
  check(f == "preferences", "data_format must be auto, preferences or rankings, got '" + f + "'");
  return read_preferences(path, opt);
}

std::vector<PreferencePair> rankings_to_pairs(const std::vector<Ranking>& rankings) {
  std::vector<PreferencePair> pairs;
  for (size_t g = 0; g < rankings.size(); ++g) {
    const Ranking& rk = rankings[g];
    const size_t K = rk.completions.size();
    // Soft labels: a K x K matrix of probabilities in [0, 1].
    const json* probs = nullptr;
    if (rk.extra.is_object() && rk.extra.contains("preference_probs")) {
      probs = &rk.extra["preference_probs"];
      bool ok = probs->is_array() && probs->size() == K;
      for (size_t i = 0; ok && i < K; ++i) {
        ok = (*probs)[i].is_array() && (*probs)[i].size() == K;
        for (size_t j = 0; ok && j < K; ++j)
          ok = (*probs)[i][j].is_number() && (*probs)[i][j].get<double>() >= 0.0 && (*probs)[i][j].get<double>() <= 1.0;
      }
      check(ok, "ranking " + std::to_string(g) + ": preference_probs must be a " + std::to_string(K) + " x " +
                    std::to_string(K) + " matrix of probabilities in [0, 1]");
    }
    for (size_t better = 0; better < rk.tiers.size(); ++better)
      for (size_t worse = better + 1; worse < rk.tiers.size(); ++worse)
        for (int c : rk.tiers[better])
          for (int r : rk.tiers[worse]) {
            check(c >= 0 && c < static_cast<int>(rk.completions.size()) && r >= 0 &&
                      r < static_cast<int>(rk.completions.size()),
                  "ranking " + std::to_string(g) + ": completion index out of range");
            pairs.push_back({rk.prompt, rk.completions[c], rk.completions[r], 0.0, g, c, r,
                             probs ? (*probs)[c][r].get<double>() : 1.0});
          }
  }
  return pairs;
}

}  // namespace rlhf
