// Shared helpers for the tests: where the data is, running the CLI, temporary folders.
#pragma once
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

namespace rlhf::test {

// $RLHF_DATA, else the data folder CMake saw at configure time (../shared/data).
inline std::filesystem::path data_dir() {
  const char* d = std::getenv("RLHF_DATA");
  return d ? std::filesystem::path(d) : std::filesystem::path(RLHF_DEFAULT_DATA);
}

// A fresh empty folder under the system temp dir, removed when the object dies.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char tmpl[] = "/tmp/rlhf_test_XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::filesystem::path operator/(const std::string& name) const { return path / name; }
};

struct CliResult {
  int exit_code;
  std::string output;  // stdout and stderr together
};

// Runs the rlhf CLI built with the tests with `args` (already shell-quoted). `output` holds
// stdout and stderr, or stdout alone when `with_stderr` is false.
inline CliResult run_cli(const std::string& args, const std::string& stdin_text = "", bool with_stderr = true) {
  std::string cmd = std::string(RLHF_CLI_PATH) + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  std::filesystem::path in_file;
  if (!stdin_text.empty()) {
    char tmpl[] = "/tmp/rlhf_stdin_XXXXXX";
    int fd = ::mkstemp(tmpl);
    in_file = tmpl;
    FILE* f = ::fdopen(fd, "w");
    std::fputs(stdin_text.c_str(), f);
    std::fclose(f);
    cmd += " < " + in_file.string();
  } else {
    cmd += " < /dev/null";
  }
  CliResult r{-1, ""};
  FILE* p = ::popen(cmd.c_str(), "r");
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.output.append(buf, n);
  int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  if (!in_file.empty()) std::filesystem::remove(in_file);
  return r;
}

}  // namespace rlhf::test
