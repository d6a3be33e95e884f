// The simulated labeler: a hand-written sentiment lexicon as the "gold" preference, rankings
// drawn from it with Plackett-Luce noise, and distinct-n for checking that diversity survives.
#include "feedback/labeler.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <utility>

#include "core/error.h"

namespace rlhf {

namespace {

// Lower-cased words: runs of ASCII letters, with an apostrophe kept only between two letters
// ("didn't" is one word, "'hello'" is "hello"). Everything else separates words. Shared by
// the lexicon and distinct_n so both see the same words.
std::vector<std::string> split_words(const std::string& text) {
  auto is_letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  std::vector<std::string> words;
  std::string cur;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (is_letter(c)) {
      cur.push_back(static_cast<char>(c | 0x20));  // ASCII lower-case
    } else if (c == '\'' && !cur.empty() && i + 1 < text.size() && is_letter(text[i + 1])) {
      cur.push_back(c);
    } else if (!cur.empty()) {
      words.push_back(std::move(cur));
      cur.clear();
    }
  }
  if (!cur.empty()) words.push_back(std::move(cur));
  return words;
}

}  // namespace

SentimentLexicon SentimentLexicon::builtin() {
  // Written for this project: words a small children's-story model actually produces, with
  // their inflections spelled out (no stemmer, so the list is the whole truth). A few words
  // that carry the feeling on their own get weight 2.
  static const char* const kPositive[] = {
      "happy", "happier", "happiest", "happily", "smile", "smiled", "smiles", "smiling",
      "laugh", "laughed", "laughs", "laughing", "love", "loved", "loves", "loving",
      "fun", "funny", "friend", "friends", "friendly", "kind", "kindly", "hug",
      "hugged", "hugs", "hugging", "play", "played", "playing", "joy", "proud",
      "beautiful", "pretty", "nice", "glad", "safe", "share", "shared", "sharing",
      "thank", "thanked", "thanks", "excited", "great", "good", "best", "wonderful",
      "sweet", "warm", "brave", "gentle", "cheer", "cheered", "cheerful", "yay",
      "enjoy", "enjoyed", "together", "bright", "helped", "help", "helpful", "amazing"};
  static const char* const kNegative[] = {
      "sad", "sadly", "cry", "cried", "cries", "crying", "angry", "angrily",
      "scared", "scary", "hurt", "hurts", "lonely", "alone", "mad", "bad",
      "broke", "broken", "lost", "afraid", "sorry", "upset", "mean", "fear",
      "frightened", "worried", "worry", "tears", "sick", "pain", "fight", "fought",
      "yell", "yelled", "shout", "shouted", "scream", "screamed", "hate", "hated",
      "terrible", "awful", "ugly", "dark", "crash", "crashed", "frowning", "bored",
      "grumpy", "naughty", "wrong", "mess", "ruined", "danger", "dangerous", "monster",
      "sob", "sobbed", "frown", "frowned", "miserable", "unhappy", "cruel", "trouble"};
  static const char* const kStrongPositive[] = {"happy", "happily", "love", "loved", "joy", "wonderful"};
  static const char* const kStrongNegative[] = {"sad", "cried", "crying", "hate", "hated", "miserable"};

  SentimentLexicon lex;
  for (const char* w : kPositive) lex.words_[w] = 1.0;
  for (const char* w : kNegative) lex.words_[w] = -1.0;
  for (const char* w : kStrongPositive) lex.words_[w] = 2.0;
  for (const char* w : kStrongNegative) lex.words_[w] = -2.0;
  return lex;
}

// score = (sum of the weights of the words found) / sqrt(number of words + 1).
// Dividing by sqrt(N + 1) rather than N keeps a long happy story above a short one, but
// padding a text with more of the same cannot grow the score linearly: repeating one
// positive word N times gives N / sqrt(N + 1) ~ sqrt(N), and neutral filler only lowers it.
// The +1 makes the empty text score 0 instead of dividing by zero.
double SentimentLexicon::score(const std::string& text) const {
  std::vector<std::string> words = split_words(text);
  double sum = 0.0;
  for (const std::string& w : words) {
    auto it = words_.find(w);
    if (it != words_.end()) sum += it->second;
  }
  return sum / std::sqrt(static_cast<double>(words.size()) + 1.0);
}

SimulatedLabeler::SimulatedLabeler(SentimentLexicon lexicon, double temperature, uint64_t seed)
    : lexicon_(std::move(lexicon)), temperature_(temperature), rng_(seed) {
  check(temperature >= 0.0 && std::isfinite(temperature),
        "SimulatedLabeler: temperature must be finite and >= 0, got " + std::to_string(temperature));
}

std::vector<Ranking> SimulatedLabeler::rank(const std::vector<LabelRequest>& requests) {
  std::vector<Ranking> out;
  out.reserve(requests.size());
  for (size_t r = 0; r < requests.size(); ++r) {
    const LabelRequest& req = requests[r];
    const int K = static_cast<int>(req.completions.size());
    check(K >= 2, "SimulatedLabeler: request " + std::to_string(r) + " has " + std::to_string(K) +
                      " completions; ranking needs at least 2");
    std::vector<double> gold(K);
    for (int i = 0; i < K; ++i) gold[i] = lexicon_.score(req.completions[i]);

    Ranking ranking;
    ranking.prompt = req.prompt;
    ranking.completions = req.completions;
    ranking.labeler = name();
    ranking.extra = nlohmann::json::object({{"gold_scores", gold}});

    if (temperature_ == 0.0) {
      // Exact sort; equal gold scores form one tier. Stable by index for a fixed output.
      std::vector<int> order(K);
      for (int i = 0; i < K; ++i) order[i] = i;
      std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return gold[a] > gold[b]; });
      for (int i : order) {
        if (ranking.tiers.empty() || gold[ranking.tiers.back().front()] != gold[i]) ranking.tiers.push_back({});
        ranking.tiers.back().push_back(i);
      }
    } else {
      // Plackett-Luce, best first: pick among the remaining with p ∝ exp(score / T). With
      // K = 2 this is exactly Bradley-Terry: P(a over b) = sigmoid((s_a - s_b) / T).
      // Subtracting the max logit keeps exp() finite for tiny temperatures.
      std::vector<int> remaining(K);
      for (int i = 0; i < K; ++i) remaining[i] = i;
      while (!remaining.empty()) {
        double max_logit = -INFINITY;
        for (int i : remaining) max_logit = std::max(max_logit, gold[i] / temperature_);
        std::vector<double> w;
        w.reserve(remaining.size());
        double total = 0.0;
        for (int i : remaining) {
          w.push_back(std::exp(gold[i] / temperature_ - max_logit));
          total += w.back();
        }
        // Inverse-CDF draw from the raw 64-bit engine output (top 53 bits -> [0, 1)): the
        // standard distributions' algorithms are implementation-defined, and rankings should
        // not change with the standard library.
        double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * total;
        size_t pick = remaining.size() - 1;
        for (size_t j = 0; j < w.size(); ++j) {
          if (u < w[j]) {
            pick = j;
            break;
          }
          u -= w[j];
        }
        ranking.tiers.push_back({remaining[pick]});
        remaining.erase(remaining.begin() + static_cast<std::ptrdiff_t>(pick));
      }
    }
    out.push_back(std::move(ranking));
  }
  return out;
}

double distinct_n(const std::vector<std::string>& texts, int n) {
  check(n >= 1, "distinct_n: n must be >= 1, got " + std::to_string(n));
  std::set<std::vector<std::string>> unique;
  size_t total = 0;
  // n-grams do not cross text boundaries: each text is its own sequence.
  for (const std::string& text : texts) {
    std::vector<std::string> words = split_words(text);
    for (size_t i = 0; i + static_cast<size_t>(n) <= words.size(); ++i) {
      unique.emplace(words.begin() + static_cast<std::ptrdiff_t>(i),
                     words.begin() + static_cast<std::ptrdiff_t>(i + static_cast<size_t>(n)));
      ++total;
    }
  }
  return total == 0 ? 0.0 : static_cast<double>(unique.size()) / static_cast<double>(total);
}

}  // namespace rlhf
