// Run reports: one self-contained HTML page per run directory (inline SVG and CSS; no
// scripts, fonts or anything fetched) with the training curves, the reward model's
// accuracy, the evaluation summary and samples before and after training.
#pragma once
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace rlhf {

// One metric over training. values[i] belongs to steps[i]; NaN where the line had a
// non-finite value (JSON null: that is how non-finite numbers are written).
struct MetricSeries {
  std::vector<double> steps, values;
};
using MetricLog = std::map<std::string, MetricSeries>;  // metric name -> series

// Every numeric field but `step` of a metrics.jsonl (one JSON object per line), against
// the line's `step` (else its record number, from 1). Bare NaN / Infinity / -Infinity (as
// Python's json writes them) read as non-finite values. A line that is still not a JSON
// object (cut off by a crash, say) is skipped; its number goes to `skipped` when given.
MetricLog read_metric_log(const std::filesystem::path& path, std::vector<size_t>* skipped = nullptr);

// At most this many plots per metrics file; the rest are named below the plots (at most
// kMaxNamesListed of them) with a count of the others.
constexpr size_t kMaxPlots = 60, kMaxNamesListed = 100;

// The metrics a report plots, in order: the headline ones (PPO's score, gold, KL, ...,
// then loss and accuracy) when present, then the rest by name; time/* only when there is
// nothing else, and never a series without a finite value. At most kMaxPlots.
std::vector<std::string> metrics_to_plot(const MetricLog& log);

// Escapes & < > " ' : the result is safe as HTML text and as a quoted attribute value; bytes
// that are not UTF-8 (model text) become U+FFFD, as in every other writer (core/utf8.h).
std::string html_escape(const std::string& text);

// One small plot: <svg class="plot" data-metric="NAME"> with a title, axes with tick
// labels, and <polyline class="series"> through the finite points in order (non-finite
// ones skipped); <circle class="marker"> at each point when there are few of them.
std::string svg_plot(const std::string& metric, const MetricSeries& series);

// The HTML report of `run_dir`: a pipeline's (summary.json, rm/, ppo/) or any trainer's
// (metrics.jsonl). Throws Error naming the directory when there is nothing to report.
std::string render_report(const std::filesystem::path& run_dir);

// Writes render_report(run_dir) atomically to `out` (empty: RUN_DIR/report.html) and
// returns the path written.
std::filesystem::path write_report(const std::filesystem::path& run_dir, std::filesystem::path out = {});

}  // namespace rlhf
