#include "report/report.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "core/io.h"
#include "core/utf8.h"
#include "feedback/redteam.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace rlhf {

namespace {

struct Titled {
  const char* metric;
  const char* title;
};
// The metrics a report leads with, in this order.
constexpr Titled kHeadline[] = {
    {"objective/scores", "Score (reward model, after the missing-EOS and length penalties)"},
    {"objective/gold", "Gold score (sentiment lexicon)"},
    {"objective/kl", "KL to the reference"},
    {"kl_coef", "KL coefficient \u03b2"},
    {"objective/entropy", "Entropy per response (nats)"},
    {"loss/policy", "Policy loss"},
    {"loss/value", "Value loss"},
    {"policy/clipfrac", "Policy clip fraction"},
    {"response_length", "Response length (tokens)"},
    {"loss", "Training loss"},
    {"eval/loss", "Held-out loss"},
    {"accuracy", "Pair accuracy (training batches)"},
    {"eval/accuracy", "Held-out pair accuracy"},
};
// Titles of other metrics the trainers write; these plot in name order.
constexpr Titled kOtherTitles[] = {
    {"objective/rlhf_reward", "Score \u2212 \u03b2\u00b7KL"},
    {"objective/scores_before_penalties", "Reward-model score before penalties"},
    {"policy/entropy_avg", "Entropy per token (nats)"},
    {"policy/approxkl", "Approximate KL of the update"},
    {"val/clipfrac", "Value clip fraction"},
    {"objective/advantage_std", "Standard deviation of the advantages"},
    {"val/explained_variance", "Explained variance of the values"},
    {"objective/groups_with_signal", "Share of groups whose scores differ"},
    {"objective/sampling_rounds", "Sampling rounds (dynamic sampling)"},
    {"objective/scores_margin", "Score of chosen \u2212 rejected"},
    {"objective/kept_fraction", "Share of prompts kept (best-of-n)"},
    {"objective/best_score", "Score of the kept samples"},
    {"rewards/chosen", "Implicit reward of chosen"},
    {"rewards/rejected", "Implicit reward of rejected"},
    {"rewards/margins", "Implicit reward margin"},
    {"rewards/accuracies", "Implicit reward accuracy"},
    {"logps/chosen", "Log-probability of chosen"},
    {"logps/rejected", "Log-probability of rejected"},
    {"grad_norm", "Gradient norm"},
    {"lr", "Learning rate"},
    {"epoch", "Epoch"},
    {"margin", "Reward margin (training batches)"},
    {"eval/margin", "Held-out reward margin"},
    {"eval/perplexity", "Held-out perplexity"},
};

// The algorithm of a PPO-loop run, from its config.toml (`algorithm = "grpo"`), as headings name
// it ("GRPO", "Online DPO", "Best-of-n"): "PPO" when the file or the line is missing.
std::string policy_algorithm(const fs::path& run) {
  if (fs::exists(run / "config.toml")) {
    std::istringstream in(read_file(run / "config.toml"));
    for (std::string line; std::getline(in, line);) {
      const auto q = line.find_first_of("\"'");  // a run's config.toml writes 'literal' strings
      if (line.rfind("algorithm", 0) != 0 || q == std::string::npos) continue;
      std::string name = line.substr(q + 1, line.find(line[q], q + 1) - q - 1);
      if (name == "online_dpo") return "Online DPO";
      if (name == "best_of_n") return "Best-of-n";
      for (auto& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
      if (!name.empty()) return name;
    }
  }
  return "PPO";
}

std::string title_of(const std::string& metric) {
  for (const auto& t : kHeadline)
    if (metric == t.metric) return t.title;
  for (const auto& t : kOtherTitles)
    if (metric == t.metric) return t.title;
  return metric;
}

template <class... A>
std::string strf(const char* format, A... args) {
  char buf[128];
  std::snprintf(buf, sizeof(buf), format, args...);
  return buf;
}

// Integers as such, else 4 significant digits; "n/a" for what is not a finite number.
std::string fmt_value(double v) {
  if (!std::isfinite(v)) return "n/a";
  if (v == std::round(v) && std::abs(v) < 1e15) return strf("%.0f", v);
  return strf("%.4g", v);
}
std::string fmt_value(const json& j) {
  if (j.is_number()) return fmt_value(j.get<double>());
  if (j.is_string()) return j.get<std::string>();
  if (j.is_null()) return "n/a";
  return j.dump();
}

// A metric name as the page shows it: very long ones cut (the page stays readable and small).
std::string shown_name(const std::string& metric) {
  constexpr size_t kMax = 120;
  if (metric.size() <= kMax) return metric;
  size_t cut = kMax;
  while (cut > 0 && (static_cast<unsigned char>(metric[cut]) & 0xC0) == 0x80) --cut;  // not inside a UTF-8 character
  return metric.substr(0, cut) + "\u2026";
}

bool has_finite(const MetricSeries& s) {
  return std::any_of(s.values.begin(), s.values.end(), [](double v) { return std::isfinite(v); });
}

// ---- plots ---------------------------------------------------------------------------

// A round tick spacing (1, 2 or 5 times a power of ten) giving about `target` ticks.
double nice_step(double span, int target) {
  const double raw = span / target, mag = std::pow(10.0, std::floor(std::log10(raw))), r = raw / mag;
  return (r < 1.5 ? 1 : r < 3 ? 2 : r < 7 ? 5 : 10) * mag;
}

// A tick label with the decimals its spacing needs.
std::string fmt_tick(double v, double step) {
  if (std::abs(v) < step * 1e-6) v = 0;  // no "-0" or rounding noise at zero
  if (std::max(std::abs(v), step) >= 1e5 || step < 1e-4) return strf("%.3g", v);
  return strf("%.*f", std::max(0, int(-std::floor(std::log10(step) + 1e-9))), v);
}

struct Axis {
  double lo, hi, step;
  std::vector<double> ticks() const {
    std::vector<double> t;
    for (double v = std::ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9 && t.size() < 20; v += step) t.push_back(v);
    return t;
  }
};

// An axis over [mn, mx]: widened when flat (a constant series or a single point), whole
// ticks apart (at least 1 for integer steps), its ends on ticks when `snap`.
Axis make_axis(double mn, double mx, bool snap, bool integer) {
  if (mn == mx) {
    const double d = mn == 0 ? 1 : std::abs(mn) * 0.1;
    mn -= d;
    mx += d;
  }
  double step = nice_step(mx - mn, 4);
  if (integer) step = std::max(step, 1.0);
  if (snap) {
    mn = std::floor(mn / step + 1e-9) * step;
    mx = std::ceil(mx / step - 1e-9) * step;
  }
  return {mn, mx, step};
}

// ---- page parts ----------------------------------------------------------------------

constexpr const char* kStyle = R"(
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2328;background:#f6f7f9;margin:0}
main{max-width:1320px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:22px;margin:0 0 2px}
h2{font-size:17px;margin:30px 0 10px;padding-bottom:4px;border-bottom:1px solid #d8dce1}
code,.path{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
.path{color:#57606a;margin:0}
.note{color:#57606a;font-size:12.5px}
.headline{font-size:15px;margin:6px 0 12px}
.headline b{font-size:19px}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:12px}
.plots figure{margin:0;background:#fff;border:1px solid #d8dce1;border-radius:6px;padding:2px}
svg.plot{display:block;width:100%;height:auto}
svg.plot text{font-size:11px;fill:#57606a}
svg.plot .title{font-size:13.5px;font-weight:600;fill:#1f2328}
svg.plot .key{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:10.5px}
svg.plot .last{font-size:12px;fill:#1f2328}
svg.plot .gridline{stroke:#eceef1}
svg.plot .axis{stroke:#8c959f}
svg.plot .series{fill:none;stroke:#2563eb;stroke-width:1.6;stroke-linejoin:round}
svg.plot .marker{fill:#2563eb}
.tables{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}
table{border-collapse:collapse;background:#fff;border:1px solid #d8dce1}
th,td{padding:6px 12px;border-bottom:1px solid #eceef1;text-align:left;vertical-align:top}
th{background:#f0f2f4;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
table.samples{width:100%;table-layout:fixed}
table.samples td{white-space:pre-wrap;overflow-wrap:anywhere}
table.samples col.i{width:2.5em}
table.samples col.p{width:22%}
h3{font-size:15px;margin:18px 0 8px}
details pre{background:#fff;border:1px solid #d8dce1;padding:8px 12px;overflow:auto}
)";

// The training curves of one metrics file, as a grid of plots, and lines on what was left
// out: metrics not plotted (named up to kMaxNamesListed) and lines that could not be read.
std::string curves_html(const MetricLog& log, const fs::path& source, const std::vector<size_t>& skipped) {
  const auto plotted = metrics_to_plot(log);
  std::string o = "<p class=\"note\">From <code>" + html_escape(source.string()) + "</code>.</p>\n";
  if (!skipped.empty()) {
    std::string lines;
    for (size_t i = 0; i < std::min<size_t>(skipped.size(), 10); ++i) lines += (i ? ", " : "") + std::to_string(skipped[i]);
    o += "<p class=\"note skipped\">" + std::to_string(skipped.size()) + (skipped.size() == 1 ? " line" : " lines") +
         " of this file could not be read (not a JSON object) and " + (skipped.size() == 1 ? "was" : "were") +
         " skipped: line " + lines + (skipped.size() > 10 ? ", \u2026" : "") + ".</p>\n";
  }
  o += "<div class=\"plots\">\n";
  for (const auto& m : plotted) o += "<figure>" + svg_plot(m, log.at(m)) + "</figure>\n";
  o += "</div>\n";
  std::string names;
  size_t left = 0;
  for (const auto& [m, s] : log) {
    if (std::find(plotted.begin(), plotted.end(), m) != plotted.end()) continue;
    if (++left <= kMaxNamesListed)
      names += (names.empty() ? "" : ", ") + html_escape(shown_name(m)) + (has_finite(s) ? "" : " (no finite value)");
  }
  if (left > kMaxNamesListed) names += " and " + std::to_string(left - kMaxNamesListed) + " more";
  if (left > 0)
    o += "<p class=\"note\">Not plotted (" + std::to_string(left) + (left == 1 ? " metric" : " metrics") +
         (plotted.size() == kMaxPlots ? "; a report shows at most " + std::to_string(kMaxPlots) + " plots per file" : "") +
         "): " + names + ".</p>\n";
  return o;
}

// The last finite value of a metric (and its step), if any.
std::optional<std::pair<double, double>> last_finite(const MetricLog& log, const std::string& metric) {
  auto it = log.find(metric);
  if (it == log.end()) return std::nullopt;
  for (size_t i = it->second.values.size(); i-- > 0;)
    if (std::isfinite(it->second.values[i])) return std::make_pair(it->second.steps[i], it->second.values[i]);
  return std::nullopt;
}

std::string accuracy_line(double accuracy, const std::string& where) {
  return "<p class=\"headline\">Held-out pair accuracy: <b>" + fmt_value(accuracy) + "</b> <span class=\"note\">(" +
         html_escape(where) + ")</span></p>\n";
}

// The evaluation table of a pipeline's summary.json: before/after rows, the gain with its
// interval, then every other scalar field as it is.
std::string summary_html(const json& s) {
  auto cell = [&](const char* key) { return s.contains(key) ? html_escape(fmt_value(s[key])) : std::string("\u2014"); };
  struct Row {
    const char *label, *before, *after;
  };
  const Row rows[] = {{"Gold score (sentiment lexicon)", "gold_before", "gold_after"},
                      {"Reward-model score", "rm_score_before", "rm_score_after"},
                      {"KL to the reference", nullptr, "kl"},
                      {"Distinct-2 (diversity)", "distinct_2_before", "distinct_2_after"},
                      {"Mean length (tokens)", "length_before", "length_after"}};
  std::vector<std::string> used = {"gold_diff", "gold_diff_ci95", "rm_accuracy", "eval_samples", "samples"};
  std::string pairs, more;
  for (const auto& r : rows) {
    if (!(r.before && s.contains(r.before)) && !s.contains(r.after)) continue;
    pairs += std::string("<tr><td>") + r.label + "</td><td class=\"num\">" + (r.before ? cell(r.before) : "0") +
         "</td><td class=\"num\">" + cell(r.after) + "</td></tr>\n";
    if (r.before) used.push_back(r.before);
    used.push_back(r.after);
  }
  if (s.contains("gold_diff")) {
    std::string ci;
    if (s.contains("gold_diff_ci95") && s["gold_diff_ci95"].is_array() && s["gold_diff_ci95"].size() == 2)
      ci = " &nbsp;[" + html_escape(fmt_value(s["gold_diff_ci95"][0])) + ", " + html_escape(fmt_value(s["gold_diff_ci95"][1])) +
           "] <span class=\"note\">95% bootstrap interval</span>";
    more += "<tr><td>Gold difference (after \u2212 before)</td><td class=\"num\">" + cell("gold_diff") + ci + "</td></tr>\n";
  }
  if (s.contains("rm_accuracy"))
    more += "<tr><td>Reward-model held-out pair accuracy</td><td class=\"num\">" + cell("rm_accuracy") + "</td></tr>\n";
  if (s.contains("eval_samples"))
    more += "<tr><td>Held-out samples (before and after each)</td><td class=\"num\">" + cell("eval_samples") + "</td></tr>\n";
  for (const auto& [k, v] : s.items())
    if (!v.is_structured() && std::find(used.begin(), used.end(), k) == used.end())
      more += "<tr><td><code>" + html_escape(k) + "</code></td><td class=\"num\">" + html_escape(fmt_value(v)) + "</td></tr>\n";
  std::string o = "<div class=\"tables\">\n";
  if (!pairs.empty())
    o += "<table class=\"summary\">\n<tr><th>held-out prompts</th><th>before</th><th>after</th></tr>\n" + pairs + "</table>\n";
  if (!more.empty()) o += "<table class=\"summary\">\n" + more + "</table>\n";
  return o + "</div>\n";
}

// Held-out prompts with a sample of the policy before and after training, side by side.
std::string samples_html(const json& samples) {
  auto text = [](const json& j, const char* key) {
    if (!j.is_object() || !j.contains(key)) return std::string();
    return html_escape(j[key].is_string() ? j[key].get<std::string>() : j[key].dump());
  };
  std::string o =
      "<table class=\"samples\">\n<colgroup><col class=\"i\"><col class=\"p\"><col><col></colgroup>\n"
      "<tr><th>#</th><th>prompt</th><th>before</th><th>after</th></tr>\n";
  for (size_t i = 0; i < samples.size(); ++i)
    o += "<tr><td class=\"num\">" + std::to_string(i + 1) + "</td><td>" + text(samples[i], "prompt") + "</td><td>" +
         text(samples[i], "before") + "</td><td>" + text(samples[i], "after") + "</td></tr>\n";
  return o + "</table>\n";
}

std::string config_html(const fs::path& config) {
  if (!fs::exists(config)) return "";
  return "<details><summary>Configuration (<code>" + html_escape(config.filename().string()) + "</code>)</summary><pre>" +
         html_escape(read_file(config)) + "</pre></details>\n";
}

// A pipeline's run directory: evaluation summary, PPO curves, reward model, samples.
std::string pipeline_body(const fs::path& run) {
  std::string o;
  json summary;
  if (fs::exists(run / "summary.json")) {
    summary = json::parse(read_file(run / "summary.json"), nullptr, false);
    check(summary.is_object(), (run / "summary.json").string() + ": not a JSON object");
    o += "<h2>Evaluation on held-out prompts</h2>\n" + summary_html(summary);
  }
  if (fs::exists(run / "redteam.json")) {
    const json redteam = json::parse(read_file(run / "redteam.json"), nullptr, false);
    check(redteam.is_object(), (run / "redteam.json").string() + ": not a JSON object");
    o += "<h2>Red-team evaluation</h2>\n" + redteam_report_html(redteam);
  }
  if (fs::exists(run / "ppo" / "metrics.jsonl")) {
    std::vector<size_t> skipped;
    const auto log = read_metric_log(run / "ppo" / "metrics.jsonl", &skipped);
    if (!log.empty()) o += "<h2>" + policy_algorithm(run / "ppo") + "</h2>\n" + curves_html(log, run / "ppo" / "metrics.jsonl", skipped);
  }
  std::string rm;
  json result;
  if (fs::exists(run / "rm" / "result.json")) result = json::parse(read_file(run / "rm" / "result.json"), nullptr, false);
  MetricLog rm_log;
  std::vector<size_t> rm_skipped;
  if (fs::exists(run / "rm" / "metrics.jsonl")) rm_log = read_metric_log(run / "rm" / "metrics.jsonl", &rm_skipped);
  if (result.is_object() && result.contains("eval/accuracy") && result["eval/accuracy"].is_number())
    rm += accuracy_line(result["eval/accuracy"].get<double>(), "rm/result.json");
  else if (summary.is_object() && summary.contains("rm_accuracy") && summary["rm_accuracy"].is_number())
    rm += accuracy_line(summary["rm_accuracy"].get<double>(), "summary.json");
  else if (auto last = last_finite(rm_log, "eval/accuracy"))
    rm += accuracy_line(last->second, "rm/metrics.jsonl, step " + fmt_value(last->first));
  if (!rm_log.empty()) rm += curves_html(rm_log, run / "rm" / "metrics.jsonl", rm_skipped);
  if (!rm.empty()) o += "<h2>Reward model</h2>\n" + rm;
  if (summary.is_object() && summary.contains("samples") && summary["samples"].is_array() && !summary["samples"].empty())
    o += "<h2>Samples before and after training</h2>\n" + samples_html(summary["samples"]);
  return o;
}

// Any trainer's run directory (SFT, reward model, DPO, PPO): its metrics.jsonl.
std::string trainer_body(const fs::path& run, std::string& kind) {
  std::vector<size_t> skipped;
  const auto log = read_metric_log(run / "metrics.jsonl", &skipped);
  if (log.empty()) return "";
  kind = log.count("objective/kl") ? policy_algorithm(run) + " run" : log.count("rewards/margins") ? "DPO run" : log.count("margin") ? "reward-model run" : "training run";
  std::string o = "<h2>Training curves</h2>\n";
  if (auto last = last_finite(log, "eval/accuracy")) o += accuracy_line(last->second, "step " + fmt_value(last->first));
  return o + curves_html(log, run / "metrics.jsonl", skipped);
}

}  // namespace

namespace {

// `line` with the bare NaN, Infinity and -Infinity outside strings (Python's json.dumps of
// non-finite floats; not JSON) written as null.
std::string nonfinite_to_null(const std::string& line) {
  std::string o;
  o.reserve(line.size());
  bool in_string = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char c = line[i];
    if (in_string) {
      o += c;
      if (c == '\\' && i + 1 < line.size()) o += line[++i];
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (const std::string word : {"NaN", "Infinity", "-Infinity"})
      if (line.compare(i, word.size(), word) == 0) {
        o += "null";
        i += word.size() - 1;
        replaced = true;
        break;
      }
    if (!replaced) o += c;
  }
  return o;
}

}  // namespace

MetricLog read_metric_log(const fs::path& path, std::vector<size_t>* skipped) {
  std::istringstream in(read_file(path));
  MetricLog log;
  size_t line_no = 0, records = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j = json::parse(line, nullptr, false);
    if (j.is_discarded()) j = json::parse(nonfinite_to_null(line), nullptr, false);
    if (!j.is_object()) {
      if (skipped) skipped->push_back(line_no);
      continue;
    }
    ++records;
    const double step = j.contains("step") && j["step"].is_number() ? j["step"].get<double>() : double(records);
    for (const auto& [k, v] : j.items()) {
      if (k == "step" || !(v.is_number() || v.is_null())) continue;
      auto& s = log[k];
      s.steps.push_back(step);
      s.values.push_back(v.is_number() ? v.get<double>() : std::nan(""));
    }
  }
  return log;
}

std::vector<std::string> metrics_to_plot(const MetricLog& log) {
  auto plottable = [&](const std::string& m) { return log.count(m) && has_finite(log.at(m)); };
  auto is_time = [](const std::string& m) { return m.rfind("time/", 0) == 0; };
  std::vector<std::string> out;
  for (const auto& t : kHeadline)
    if (plottable(t.metric)) out.push_back(t.metric);
  for (auto it = log.begin(); it != log.end() && out.size() < kMaxPlots; ++it)
    if (!is_time(it->first) && plottable(it->first) && std::find(out.begin(), out.end(), it->first) == out.end())
      out.push_back(it->first);
  if (out.empty())
    for (auto it = log.begin(); it != log.end() && out.size() < kMaxPlots; ++it)
      if (plottable(it->first)) out.push_back(it->first);
  return out;
}

std::string html_escape(const std::string& raw) {
  const std::string text = valid_utf8(raw);  // model text may not be UTF-8; the page is
  std::string o;
  o.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&#39;"; break;
      default: o += c;
    }
  }
  return o;
}

std::string svg_plot(const std::string& metric, const MetricSeries& series) {
  constexpr double W = 400, H = 262, L = 58, R = W - 16, T = 50, B = H - 38;  // plot area [L, R] x [T, B]
  std::vector<std::pair<double, double>> pts;  // the finite (step, value) points, in order
  for (size_t i = 0; i < series.values.size(); ++i)
    if (std::isfinite(series.steps[i]) && std::isfinite(series.values[i])) pts.emplace_back(series.steps[i], series.values[i]);
  const std::string name = html_escape(shown_name(metric)), title = html_escape(shown_name(title_of(metric)));
  std::string o = "<svg class=\"plot\" data-metric=\"" + name + "\" viewBox=\"0 0 " + fmt_value(W) + " " + fmt_value(H) +
                  "\" role=\"img\" aria-label=\"" + title + "\">\n<text class=\"title\" x=\"12\" y=\"21\">" + title +
                  "</text>\n<text class=\"key\" x=\"12\" y=\"37\">" + name + "</text>\n";
  if (pts.empty())
    return o + "<text x=\"" + fmt_value((L + R) / 2) + "\" y=\"" + fmt_value((T + B) / 2) +
           "\" text-anchor=\"middle\">no finite values</text>\n</svg>";
  o += "<text class=\"last\" x=\"" + fmt_value(R) + "\" y=\"21\" text-anchor=\"end\">last " + fmt_value(pts.back().second) + "</text>\n";
  if (pts.size() < series.values.size())
    o += "<text x=\"" + fmt_value(R) + "\" y=\"37\" text-anchor=\"end\">" + std::to_string(series.values.size() - pts.size()) +
         " non-finite skipped</text>\n";

  double x0 = pts[0].first, x1 = x0, y0 = pts[0].second, y1 = y0;
  bool integer_steps = true;
  for (const auto& [x, y] : pts) {
    x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
    integer_steps = integer_steps && x == std::round(x);
  }
  const Axis xa = make_axis(x0, x1, false, integer_steps), ya = make_axis(y0, y1, true, false);
  auto px = [&](double x) { return L + (x - xa.lo) / (xa.hi - xa.lo) * (R - L); };
  auto py = [&](double y) { return B - (y - ya.lo) / (ya.hi - ya.lo) * (B - T); };

  // Grid lines and tick labels, then the axes, then the data on top.
  for (double t : ya.ticks())
    o += strf("<line class=\"gridline\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", L, R, py(t), py(t)) +
         strf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">", L - 6, py(t) + 4) + fmt_tick(t, ya.step) + "</text>\n";
  for (double t : xa.ticks())
    o += strf("<line class=\"axis\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", px(t), px(t), B, B + 4) +
         strf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", px(t), B + 17) + fmt_tick(t, xa.step) + "</text>\n";
  o += strf("<line class=\"axis\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>", L, L, T - 4, B) +
       strf("<line class=\"axis\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\"/>\n", L, R, B, B) +
       strf("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">step</text>\n", (L + R) / 2, H - 6);
  std::string points;
  for (const auto& [x, y] : pts) points += strf(points.empty() ? "%.1f,%.1f" : " %.1f,%.1f", px(x), py(y));
  o += "<polyline class=\"series\" points=\"" + points + "\"/>\n";
  // Few points (evaluations, short runs, a single step) are hard to see as a line alone.
  if (pts.size() <= 16)
    for (const auto& [x, y] : pts) o += strf("<circle class=\"marker\" cx=\"%.1f\" cy=\"%.1f\" r=\"3\"/>", px(x), py(y));
  return o + "\n</svg>";
}

std::string render_report(const fs::path& run_dir) {
  check(fs::is_directory(run_dir), run_dir.string() + ": no such run directory");
  const bool pipeline = fs::exists(run_dir / "summary.json") || fs::exists(run_dir / "ppo" / "metrics.jsonl") ||
                        fs::exists(run_dir / "rm" / "metrics.jsonl") || fs::exists(run_dir / "redteam.json");
  std::string kind = "pipeline run", body;
  if (pipeline) body = pipeline_body(run_dir);
  if (pipeline && !fs::exists(run_dir / "summary.json") && !fs::exists(run_dir / "ppo") && !fs::exists(run_dir / "rm"))
    kind = "red-team evaluation";
  else if (fs::exists(run_dir / "metrics.jsonl")) body = trainer_body(run_dir, kind);
  check(!body.empty(),
        run_dir.string() + ": nothing to report (no metrics in metrics.jsonl, rm/ or ppo/, no summary.json or redteam.json)");
  const std::string dir = html_escape(fs::absolute(run_dir).lexically_normal().string());
  // The policy forbids scripts and every fetch: the page shows model text, and must show it inert.
  return "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
         "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
         "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>rlhf report: " +
         dir + "</title>\n<style>" + kStyle + "</style>\n</head>\n<body>\n<main>\n<h1>Run report <span class=\"note\">" + kind +
         "</span></h1>\n<p class=\"path\">" + dir + "</p>\n" + body + config_html(run_dir / "config.toml") +
         "<p class=\"note\">Written by <code>rlhf report</code> (rlhf.cpp) from the files in this directory.</p>\n"
         "</main>\n</body>\n</html>\n";
}

fs::path write_report(const fs::path& run_dir, fs::path out) {
  const std::string html = render_report(run_dir);
  if (out.empty()) out = run_dir / "report.html";
  write_file_atomic(out, html);
  return out;
}

}  // namespace rlhf
