#include "dist/process_group.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <map>
#include <thread>

#include "core/error.h"

namespace rlhf {

namespace {

// An integer environment variable, or `def` when unset; Error when set but not an integer in [lo, hi].
int env_int(const char* name, int def, int lo, int hi) {
  const char* v = std::getenv(name);
  if (!v || !*v) return def;
  char* end = nullptr;
  errno = 0;
  const long x = std::strtol(v, &end, 10);
  check(errno == 0 && *end == '\0' && x >= lo && x <= hi,
        std::string("environment: ") + name + "='" + v + "' must be an integer in [" + std::to_string(lo) + ", " +
            std::to_string(hi) + "]");
  return static_cast<int>(x);
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

}  // namespace

DistEnv dist_env_from_environment() {
  DistEnv e;
  const bool has_rank = std::getenv("RANK") != nullptr, has_world = std::getenv("WORLD_SIZE") != nullptr;
  check(has_rank == has_world, "environment: RANK and WORLD_SIZE must be set together (as torchrun sets them)");
  e.world = env_int("WORLD_SIZE", 1, 1, 1 << 20);
  e.rank = env_int("RANK", 0, 0, e.world - 1);
  e.local_rank = env_int("LOCAL_RANK", e.rank, 0, e.world - 1);
  e.master_port = env_int("MASTER_PORT", 29500, 1, 65535);
  if (const char* a = std::getenv("MASTER_ADDR"); a && *a) e.master_addr = a;
  return e;
}

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  std::chrono::milliseconds timeout;
};

ProcessGroup::ProcessGroup(const DistEnv& env, std::chrono::milliseconds timeout) : env_(env) {
  if (env_.world == 1) return;
  impl_ = std::make_unique<Impl>();
  impl_->timeout = timeout;
  const std::string who = "rank " + std::to_string(env_.rank) + " of " + std::to_string(env_.world);
  try {
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(env_.master_port);
    so.isServer = env_.rank == 0;
    so.numWorkers = env_.world;
    so.waitWorkers = true;
    so.timeout = timeout;
    impl_->store = c10::make_intrusive<c10d::TCPStore>(env_.master_addr, so);
    auto opts = c10d::ProcessGroupGloo::Options::create();
    opts->timeout = timeout;
    // Loopback when the rendezvous is local; otherwise the interface that reaches this host's name.
    const bool local = env_.master_addr == "127.0.0.1" || env_.master_addr == "localhost";
    opts->devices.push_back(local ? c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1")
                                  : c10d::ProcessGroupGloo::createDefaultDevice());
    impl_->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, env_.rank, env_.world, opts);
  } catch (const std::exception& e) {
    throw Error(who + ": could not join the process group at " + env_.master_addr + ":" +
                std::to_string(env_.master_port) + ": " + first_line(e.what()));
  }
}

ProcessGroup::~ProcessGroup() = default;

namespace {

// Runs one collective and waits for it; a peer that died or timed out becomes an Error.
template <class F>
void run(const DistEnv& env, const char* what, F&& start) {
  try {
    start()->wait();
  } catch (const std::exception& e) {
    throw Error("rank " + std::to_string(env.rank) + " of " + std::to_string(env.world) + ": " + what +
                " failed (another rank exited or timed out?): " + first_line(e.what()));
  }
}

// The tensors flattened into one contiguous buffer (one collective instead of one per tensor).
torch::Tensor flatten(const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> flat;
  for (const auto& t : tensors) flat.push_back(t.detach().reshape({-1}));
  return torch::cat(flat);
}

void unflatten(const torch::Tensor& buffer, const std::vector<torch::Tensor>& tensors) {
  int64_t at = 0;
  torch::NoGradGuard no_grad;
  for (const auto& t : tensors) {
    t.copy_(buffer.narrow(0, at, t.numel()).view_as(t));
    at += t.numel();
  }
}

}  // namespace

void ProcessGroup::allreduce_sum(const std::vector<torch::Tensor>& tensors) {
  if (env_.world == 1 || tensors.empty()) return;
  const auto dtype = tensors[0].scalar_type();
  for (const auto& t : tensors)
    check(t.is_floating_point() && t.scalar_type() == dtype && t.device().is_cpu(),
          "allreduce: CPU float tensors of one dtype only");
  std::vector<at::Tensor> buf{flatten(tensors)};
  run(env_, "all-reduce", [&] { return impl_->pg->allreduce(buf); });
  unflatten(buf[0], tensors);
}

std::function<void()> ProcessGroup::start_allreduce_sum(const torch::Tensor& buffer) {
  if (env_.world == 1) return [] {};
  check(buffer.is_floating_point() && buffer.device().is_cpu() && buffer.is_contiguous(),
        "allreduce: a contiguous CPU float tensor only");
  std::vector<at::Tensor> buf{buffer};
  c10::intrusive_ptr<c10d::Work> work;
  try {
    work = impl_->pg->allreduce(buf);
  } catch (const std::exception& e) {
    throw Error("rank " + std::to_string(env_.rank) + " of " + std::to_string(env_.world) +
                ": all-reduce failed to start: " + first_line(e.what()));
  }
  return [env = env_, work] { run(env, "all-reduce", [&] { return work; }); };
}

void ProcessGroup::allreduce_mean(const std::vector<torch::Tensor>& tensors) {
  if (env_.world == 1 || tensors.empty()) return;
  allreduce_sum(tensors);
  torch::NoGradGuard no_grad;
  for (const auto& t : tensors) t.div_(env_.world);
}

std::vector<double> ProcessGroup::allreduce_sum(const std::vector<double>& values) {
  if (env_.world == 1 || values.empty()) return values;
  auto t = torch::tensor(values, torch::kFloat64);
  allreduce_sum(std::vector<torch::Tensor>{t});
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

std::vector<double> ProcessGroup::allreduce_max(const std::vector<double>& values) {
  if (env_.world == 1 || values.empty()) return values;
  std::vector<at::Tensor> buf{torch::tensor(values, torch::kFloat64)};
  c10d::AllreduceOptions o;
  o.reduceOp = c10d::ReduceOp::MAX;
  run(env_, "all-reduce (max)", [&] { return impl_->pg->allreduce(buf, o); });
  return std::vector<double>(buf[0].data_ptr<double>(), buf[0].data_ptr<double>() + buf[0].numel());
}

void ProcessGroup::broadcast(const std::vector<torch::Tensor>& tensors, int root) {
  if (env_.world == 1 || tensors.empty()) return;
  for (const auto& t : tensors)
    check(t.scalar_type() == tensors[0].scalar_type() && t.device().is_cpu(), "broadcast: CPU tensors of one dtype only");
  std::vector<at::Tensor> buf{flatten(tensors)};
  c10d::BroadcastOptions o;
  o.rootRank = root;
  run(env_, "broadcast", [&] { return impl_->pg->broadcast(buf, o); });
  unflatten(buf[0], tensors);
}

void ProcessGroup::barrier() {
  if (env_.world == 1) return;
  run(env_, "barrier", [&] { return impl_->pg->barrier(); });
}

ProcessGroup& default_process_group() {
  // A dead peer closes its sockets and fails the others' collectives at once; the timeout only
  // bounds a live rank that stops taking part, and must outlast rank 0's evaluations and saves
  // (RLHF_DIST_TIMEOUT_S, default 30 minutes).
  static ProcessGroup group(dist_env_from_environment(),
                            std::chrono::seconds(env_int("RLHF_DIST_TIMEOUT_S", 1800, 1, 7 * 24 * 3600)));
  return group;
}

namespace {

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  check(fd >= 0, std::string("launch: socket: ") + std::strerror(errno));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof(a);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(fd);
  check(ok, "launch: could not find a free port on 127.0.0.1");
  return ntohs(a.sin_port);
}

int exit_status(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

}  // namespace

int launch_local(int nproc, const std::vector<std::string>& argv, int master_port) {
  check(nproc >= 1, "launch: --nproc must be at least 1");
  check(!argv.empty(), "launch: no command to run (rlhf launch --nproc N -- COMMAND ...)");
  const int port = master_port > 0 ? master_port : free_port();
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const std::string threads = std::to_string(std::max(1u, cores / static_cast<unsigned>(nproc)));
  std::map<pid_t, int> running;  // pid -> rank
  for (int r = 0; r < nproc; ++r) {
    const pid_t pid = ::fork();
    check(pid >= 0, std::string("launch: fork: ") + std::strerror(errno));
    if (pid == 0) {
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv("OMP_NUM_THREADS", threads.c_str(), 0);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execvp(args[0], args.data());
      std::fprintf(stderr, "launch: cannot run %s: %s\n", args[0], std::strerror(errno));
      std::_Exit(127);
    }
    running[pid] = r;
  }
  int result = 0;
  bool stopping = false;
  auto deadline = std::chrono::steady_clock::time_point::max();
  while (!running.empty()) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, stopping ? WNOHANG : 0);
    if (pid > 0) {
      const int code = exit_status(status);
      const int rank = running[pid];
      running.erase(pid);
      if (code != 0 && !stopping) {
        std::fprintf(stderr, "launch: rank %d exited with status %d; stopping the other ranks\n", rank, code);
        result = code;
        stopping = true;
        deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
        for (const auto& [p, _] : running) ::kill(p, SIGTERM);
      }
      continue;
    }
    if (pid < 0 && errno != EINTR) break;
    if (stopping && std::chrono::steady_clock::now() > deadline) {
      for (const auto& [p, _] : running) ::kill(p, SIGKILL);
      deadline = std::chrono::steady_clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return result;
}

}  // namespace rlhf
