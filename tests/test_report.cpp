// Run reports on synthetic run directories (PPO, SFT, a pipeline's): one plot per metric
// with one polyline point per finite value, model text escaped, no script anywhere, and
// clear errors for directories with nothing to report.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <regex>

#include "core/error.h"
#include "core/io.h"
#include "report/report.h"
#include "test_util.h"

using namespace rlhf;
using json = nlohmann::json;
using rlhf::test::TempDir;

namespace {

const std::vector<std::string> kPpoMetrics = {"objective/scores", "objective/gold", "objective/kl", "kl_coef",
                                              "objective/entropy", "loss/policy", "loss/value", "policy/clipfrac",
                                              "response_length"};

// A PPO-like metrics.jsonl: `steps` lines; objective/kl is null (non-finite) at step 3.
void write_ppo_metrics(const std::filesystem::path& path, int steps) {
  std::string lines;
  for (int s = 1; s <= steps; ++s) {
    json j = {{"step", s}, {"objective/rlhf_reward", 0.1 * s}, {"time/generation_s", 0.5}, {"time/training_s", 1.5}};
    for (size_t k = 0; k < kPpoMetrics.size(); ++k) j[kPpoMetrics[k]] = std::sin(0.3 * s + double(k));
    if (s == 3) j["objective/kl"] = nullptr;
    lines += j.dump() + "\n";
  }
  write_file_atomic(path, lines);
}

struct Plot {
  std::string metric;
  size_t points = 0, markers = 0;
  bool has_polyline = false;
};

// The plots of a report in page order: metric, polyline point count, marker count.
std::vector<Plot> plots_of(const std::string& html) {
  std::vector<Plot> out;
  const std::regex svg_re("<svg class=\"plot\" data-metric=\"([^\"]*)\"[^>]*>([\\s\\S]*?)</svg>");
  const std::regex poly_re("<polyline class=\"series\" points=\"([^\"]*)\"");
  const std::regex num_pair("(-?[0-9.]+),(-?[0-9.]+)");
  for (auto it = std::sregex_iterator(html.begin(), html.end(), svg_re); it != std::sregex_iterator(); ++it) {
    Plot p{(*it)[1].str()};
    const std::string body = (*it)[2].str();
    std::smatch m;
    if (std::regex_search(body, m, poly_re)) {
      p.has_polyline = true;
      const std::string pts = m[1].str();
      p.points = std::distance(std::sregex_iterator(pts.begin(), pts.end(), num_pair), std::sregex_iterator());
    }
    for (size_t pos = 0; (pos = body.find("<circle class=\"marker\"", pos)) != std::string::npos; ++pos) ++p.markers;
    out.push_back(p);
  }
  return out;
}

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

std::string error_of(const std::filesystem::path& dir) {
  try {
    render_report(dir);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Report, PpoRunHasOnePlotPerMetricWithOnePointPerFiniteValue) {
  TempDir tmp;
  write_ppo_metrics(tmp / "metrics.jsonl", 6);
  const auto out = write_report(tmp.path);
  EXPECT_EQ(out, tmp / "report.html");
  const std::string html = read_file(out);
  const auto plots = plots_of(html);
  // The headline curves first, in order, then the other metric; no time/* while others exist.
  std::vector<std::string> order;
  for (const auto& p : plots) order.push_back(p.metric);
  std::vector<std::string> expected = kPpoMetrics;
  expected.push_back("objective/rlhf_reward");
  EXPECT_EQ(order, expected);
  for (const auto& p : plots) {
    ASSERT_TRUE(p.has_polyline) << p.metric;
    EXPECT_EQ(p.points, p.metric == "objective/kl" ? 5u : 6u) << p.metric;  // the null at step 3 is skipped
    EXPECT_EQ(p.markers, p.points) << p.metric;                                // few points: each marked
  }
  EXPECT_NE(html.find("1 non-finite skipped"), std::string::npos);
  EXPECT_NE(html.find("time/generation_s"), std::string::npos);  // named as not plotted
  EXPECT_EQ(html.find("nan"), std::string::npos);
  EXPECT_EQ(lower(html).find("<script"), std::string::npos);
  EXPECT_NE(html.find("PPO run"), std::string::npos);
  // A run of another algorithm on the PPO loop is titled by its config's `algorithm`.
  write_file_atomic(tmp / "config.toml", "seed = 0\nalgorithm = \"grpo\"\n");
  EXPECT_NE(read_file(write_report(tmp.path)).find("GRPO run"), std::string::npos);
  write_file_atomic(tmp / "config.toml", "seed = 0\nalgorithm = \"online_dpo\"\n");
  EXPECT_NE(read_file(write_report(tmp.path)).find("Online DPO run"), std::string::npos);
  write_file_atomic(tmp / "config.toml", "seed = 0\nalgorithm = 'best_of_n'\n");  // as a run writes it
  EXPECT_NE(read_file(write_report(tmp.path)).find("Best-of-n run"), std::string::npos);
}

TEST(Report, ReadMetricLogKeepsNullsAsNanAndUsesStepOrRecordNumber) {
  TempDir tmp;
  write_file_atomic(tmp / "m.jsonl", "{\"step\": 10, \"a\": 1.5, \"b\": null, \"s\": \"text\", \"f\": true}\n\n"
                                     "{\"a\": 2}\n");
  const auto log = read_metric_log(tmp / "m.jsonl");
  ASSERT_EQ(log.size(), 2u);  // a and b; strings and booleans are not metrics
  EXPECT_EQ(log.at("a").steps, (std::vector<double>{10, 2}));  // the second line has no step: its record number
  EXPECT_EQ(log.at("a").values, (std::vector<double>{1.5, 2}));
  ASSERT_EQ(log.at("b").values.size(), 1u);
  EXPECT_TRUE(std::isnan(log.at("b").values[0]));
  // A series without any finite value is not plotted.
  EXPECT_EQ(metrics_to_plot(log), std::vector<std::string>{"a"});

}

TEST(Report, ReadMetricLogSkipsAndCountsLinesItCannotReadAndTakesPythonsNaN) {
  TempDir tmp;
  // Line 2 is cut off (a crash mid-write), line 4 is Python's json.dumps of non-finite floats,
  // line 5 is not an object.
  write_file_atomic(tmp / "m.jsonl",
                    "{\"step\": 1, \"loss\": 2}\n{\"step\": 2, \"loss\": \n{\"step\": 3, \"loss\": 1}\n"
                    "{\"step\": 4, \"loss\": NaN, \"kl\": -Infinity, \"note\": \"NaN stays text\"}\n[1, 2]\n");
  std::vector<size_t> skipped;
  const auto log = read_metric_log(tmp / "m.jsonl", &skipped);
  EXPECT_EQ(skipped, (std::vector<size_t>{2, 5}));
  EXPECT_EQ(log.at("loss").steps, (std::vector<double>{1, 3, 4}));
  EXPECT_TRUE(std::isnan(log.at("loss").values[2]));
  EXPECT_TRUE(std::isnan(log.at("kl").values[0]));
  EXPECT_EQ(log.count("note"), 0u);  // a string, not a metric

  // The report is written and says what it skipped.
  write_file_atomic(tmp / "metrics.jsonl", read_file(tmp / "m.jsonl"));
  const std::string html = render_report(tmp.path);
  EXPECT_EQ(plots_of(html).size(), 1u);  // loss (kl has no finite value)
  EXPECT_NE(html.find("2 lines of this file could not be read"), std::string::npos);
  EXPECT_NE(html.find("line 2, 5."), std::string::npos);
}

TEST(Report, ThousandsOfMetricNamesAreCappedAndTheRestCounted) {
  TempDir tmp;
  constexpr int kNames = 100000;
  std::string lines;
  for (int step = 1; step <= 2; ++step) {
    std::string line = "{\"step\": " + std::to_string(step);
    for (int i = 0; i < kNames; ++i) line += ", \"metric_" + std::to_string(i) + "\": " + std::to_string(i + step);
    lines += line + "}\n";
  }
  write_file_atomic(tmp / "metrics.jsonl", lines);
  const std::string html = render_report(tmp.path);
  EXPECT_EQ(plots_of(html).size(), kMaxPlots);
  EXPECT_LT(html.size(), size_t{1} << 20) << "a page of " << html.size() << " bytes";
  const std::string more = " and " + std::to_string(kNames - kMaxPlots - kMaxNamesListed) + " more";
  EXPECT_NE(html.find(more), std::string::npos);
  EXPECT_NE(html.find("Not plotted (" + std::to_string(kNames - kMaxPlots) + " metrics; a report shows at most"), std::string::npos);
}

TEST(Report, PlotsSkipNonFiniteValuesAndHandleSinglePointsAndConstants) {
  const double nan = std::nan(""), inf = INFINITY;
  auto count = [](const std::string& s, const std::string& needle) {
    size_t n = 0;
    for (size_t pos = 0; (pos = s.find(needle, pos)) != std::string::npos; ++pos) ++n;
    return n;
  };
  auto finite_coords = [](const std::string& svg) {
    return svg.find("nan") == std::string::npos && svg.find("inf") == std::string::npos;
  };
  const auto mixed = plots_of(svg_plot("m", {{1, 2, 3, 4, 5}, {1, nan, 3, inf, -inf}}));
  ASSERT_EQ(mixed.size(), 1u);
  EXPECT_EQ(mixed[0].points, 2u);

  const std::string one = svg_plot("single", {{7}, {0.25}});
  EXPECT_TRUE(finite_coords(one)) << one;
  EXPECT_EQ(plots_of(one)[0].points, 1u);
  EXPECT_EQ(count(one, "<circle class=\"marker\""), 1u);  // a lone point is drawn as a dot

  MetricSeries flat;
  for (int s = 1; s <= 40; ++s) flat.steps.push_back(s), flat.values.push_back(3.0);
  const std::string c = svg_plot("constant", flat);
  EXPECT_TRUE(finite_coords(c)) << c;
  EXPECT_EQ(plots_of(c)[0].points, 40u);
  EXPECT_EQ(count(c, "<circle"), 0u);  // many points: the line alone
  // Every point of a flat series sits at one height inside the plot.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(c, m, std::regex("points=\"[0-9.]+,([0-9.]+) ")));
  EXPECT_EQ(count(c, "," + m[1].str()), 40u);

  const std::string zero = svg_plot("zeros", {{1, 2}, {0, 0}});
  EXPECT_TRUE(finite_coords(zero)) << zero;
  EXPECT_NE(svg_plot("none", {{1}, {nan}}).find("no finite values"), std::string::npos);
}

TEST(Report, SftRunPlotsEveryNumericMetricAgainstStep) {
  TempDir tmp;
  std::string lines;
  for (int s = 1; s <= 30; ++s) {
    json j = {{"step", s}, {"loss", 3.0 / s}, {"lr", 1e-4 * (1 - s / 30.0)}, {"grad_norm", 1.0 + 0.01 * s},
              {"epoch", (s - 1) / 10.0}, {"time/step_s", 0.2}};
    if (s % 10 == 0) j["eval/loss"] = 2.0 / s, j["eval/perplexity"] = std::exp(2.0 / s);
    lines += j.dump() + "\n";
  }
  write_file_atomic(tmp / "metrics.jsonl", lines);
  write_file_atomic(tmp / "config.toml", "model = \"m.gguf\"\nlr = 0.0001\n");
  const std::string html = read_file(write_report(tmp.path));
  std::vector<std::string> order;
  for (const auto& p : plots_of(html)) {
    order.push_back(p.metric);
    EXPECT_EQ(p.points, p.metric.rfind("eval/", 0) == 0 ? 3u : 30u) << p.metric;
  }
  EXPECT_EQ(order, (std::vector<std::string>{"loss", "eval/loss", "epoch", "eval/perplexity", "grad_norm", "lr"}));
  EXPECT_NE(html.find("lr = 0.0001"), std::string::npos);  // the run's config is shown
}

TEST(Report, TimingsArePlottedWhenTheyAreAllThereIs) {
  TempDir tmp;
  write_file_atomic(tmp / "metrics.jsonl", "{\"step\": 1, \"time/step_s\": 0.5}\n{\"step\": 2, \"time/step_s\": 0.7}\n");
  const auto plots = plots_of(render_report(tmp.path));
  ASSERT_EQ(plots.size(), 1u);
  EXPECT_EQ(plots[0].metric, "time/step_s");
  EXPECT_EQ(plots[0].points, 2u);
}

TEST(Report, PipelineRunEscapesModelTextAndShowsSummaryAccuracyAndSamples) {
  TempDir tmp;
  std::filesystem::create_directories(tmp / "ppo");
  std::filesystem::create_directories(tmp / "rm");
  write_ppo_metrics(tmp / "ppo" / "metrics.jsonl", 5);
  // A hostile metric name must come out escaped too.
  write_file_atomic(tmp / "ppo" / "metrics.jsonl",
                    read_file(tmp / "ppo" / "metrics.jsonl") + "{\"step\": 6, \"x\\\"><script>alert(3)</script>\": 1}\n");
  write_file_atomic(tmp / "rm" / "metrics.jsonl",
                    "{\"step\": 1, \"loss\": 0.69, \"accuracy\": 0.5}\n{\"step\": 2, \"loss\": 0.6, \"accuracy\": 0.6, "
                    "\"eval/loss\": 0.65, \"eval/accuracy\": 0.625}\n");
  write_file_atomic(tmp / "rm" / "result.json", json{{"eval/accuracy", 0.6875}, {"loss", 0.6}}.dump());
  json summary = {{"gold_before", 0.14},
                  {"gold_after", 0.339},
                  {"gold_diff", 0.199},
                  {"gold_diff_ci95", {0.098, 0.293}},
                  {"rm_score_before", 0.131},
                  {"rm_score_after", 0.637},
                  {"rm_accuracy", 0.6875},
                  {"kl", 10.8},
                  {"distinct_2_before", 0.741},
                  {"distinct_2_after", 0.631},
                  {"length_before", 40.5},
                  {"length_after", 44.25},
                  {"eval_samples", 128},
                  {"labeler", "simulated <b>"},
                  {"samples",
                   {{{"prompt", "Once upon a time"}, {"before", "<script>alert(1)</script>"},
                     {"after", "<img src=x onerror=alert(1)>"}},
                    {{"prompt", "Tom & \"Lily\" said 'hi'"}, {"before", "sad"}, {"after", "happy"}}}}};
  write_file_atomic(tmp / "summary.json", summary.dump(2));
  const std::string html = read_file(write_report(tmp.path));

  // No markup from the data, and no script at all.
  EXPECT_EQ(lower(html).find("<script"), std::string::npos);
  EXPECT_EQ(lower(html).find("<img"), std::string::npos);
  EXPECT_EQ(html.find("simulated <b>"), std::string::npos);
  EXPECT_NE(html.find("&lt;script&gt;alert(1)&lt;/script&gt;"), std::string::npos);
  EXPECT_NE(html.find("&lt;img src=x onerror=alert(1)&gt;"), std::string::npos);
  EXPECT_NE(html.find("Tom &amp; &quot;Lily&quot; said &#39;hi&#39;"), std::string::npos);
  EXPECT_NE(html.find("data-metric=\"x&quot;&gt;&lt;script&gt;alert(3)&lt;/script&gt;\""), std::string::npos);
  EXPECT_NE(html.find("simulated &lt;b&gt;"), std::string::npos);  // other summary scalars, escaped

  // PPO curves (gold among them), then the reward model's curves.
  std::vector<std::string> order;
  for (const auto& p : plots_of(html)) order.push_back(p.metric);
  ASSERT_GE(order.size(), kPpoMetrics.size() + 4);
  EXPECT_EQ(std::vector<std::string>(order.begin(), order.begin() + kPpoMetrics.size()), kPpoMetrics);
  EXPECT_EQ(std::vector<std::string>(order.end() - 4, order.end()),
            (std::vector<std::string>{"loss", "eval/loss", "accuracy", "eval/accuracy"}));
  // Summary numbers, the accuracy from rm/result.json, both samples.
  for (const char* s : {"0.14", "0.339", "[0.098, 0.293]", "10.8", "0.741", "44.25", ">128<", "Held-out pair accuracy: <b>0.6875</b>"})
    EXPECT_NE(html.find(s), std::string::npos) << s;
  EXPECT_NE(html.find("rm/result.json"), std::string::npos);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(html, m, std::regex("<table class=\"samples\">([\\s\\S]*?)</table>")));
  const std::string table = m[1].str();
  const std::regex row("<tr>");
  EXPECT_EQ(std::distance(std::sregex_iterator(table.begin(), table.end(), row), std::sregex_iterator()), 3);
}

TEST(Report, DirectoryWithNothingToReportIsAnError) {
  TempDir tmp;
  EXPECT_NE(error_of(tmp.path).find(tmp.path.string() + ": nothing to report"), std::string::npos) << error_of(tmp.path);
  write_file_atomic(tmp / "metrics.jsonl", "\n");  // a run that stopped before its first step
  EXPECT_NE(error_of(tmp.path).find("nothing to report"), std::string::npos);
  EXPECT_NE(error_of(tmp / "missing").find("missing: no such run directory"), std::string::npos);
  EXPECT_FALSE(std::filesystem::exists(tmp / "report.html"));
}

TEST(Report, CliWritesThePageAndFailsWithOneLineOnABadDirectory) {
  TempDir tmp;
  std::filesystem::create_directories(tmp / "run");
  write_ppo_metrics(tmp / "run" / "metrics.jsonl", 4);
  auto r = test::run_cli("report " + (tmp / "run").string(), "", false);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, (tmp / "run" / "report.html").string() + "\n");
  EXPECT_EQ(plots_of(read_file(tmp / "run" / "report.html")).size(), kPpoMetrics.size() + 1);
  r = test::run_cli("report " + (tmp / "run").string() + " --out " + (tmp / "elsewhere.html").string());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(std::filesystem::exists(tmp / "elsewhere.html"));

  for (const auto& bad : {tmp / "missing", tmp.path}) {
    r = test::run_cli("report " + bad.string());
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_EQ(r.output.rfind("rlhf: error: " + bad.string() + ": ", 0), 0u) << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << r.output;
  }
}
