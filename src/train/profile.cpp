#include "train/profile.h"

#include <torch/csrc/autograd/profiler_legacy.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <map>
#include <string>
#include <vector>

namespace rlhf {

using namespace torch::autograd::profiler;

void start_profile() { enableProfilerLegacy(ProfilerConfig(ProfilerState::CPU)); }

void stop_profile(std::ostream& out, int repeats, int rows) {
  auto lists = disableProfilerLegacy();
  // Self time: each event's duration less that of the events nested directly in it.
  std::map<std::string, double> self_us;
  for (auto& list : lists) {
    std::vector<std::pair<const LegacyEvent*, double>> stack;  // open ranges, time of their children
    for (auto& e : list) {
      if (e.kind() == EventKind::PushRange) {
        stack.push_back({&e, 0.0});
      } else if (e.kind() == EventKind::PopRange && !stack.empty()) {
        auto [start, child] = stack.back();
        stack.pop_back();
        const double d = start->cpuElapsedUs(e);
        self_us[start->name()] += d - child;
        if (!stack.empty()) stack.back().second += d;
      }
    }
  }
  std::vector<std::pair<double, std::string>> table;
  double total = 0;
  for (auto& [name, us] : self_us) {
    table.push_back({us / 1000.0 / repeats, name});
    total += us / 1000.0 / repeats;
  }
  std::sort(table.rbegin(), table.rend());
  out << "self ms per step (sum " << total << "):\n";
  for (size_t i = 0; i < std::min<size_t>(table.size(), rows); ++i) out << "  " << table[i].first << "  " << table[i].second << "\n";
}

StepProfiler::StepProfiler(int64_t step) {
  const char* e = std::getenv("RLHF_PROFILE");
  on_ = e && std::atoll(e) == step;
  if (on_) start_profile();
}

StepProfiler::~StepProfiler() {
  if (on_) stop_profile(std::cerr);
}

}  // namespace rlhf
