#include "feedback/guarded_http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace rlhf {

namespace {

using Clock = std::chrono::steady_clock;

Clock::time_point after(Clock::time_point t, double seconds) {
  return t + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

int ms_until(Clock::time_point t) {
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(t - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(ms, 0, INT_MAX));
}

// Waits until `fd` has `events` (or an error or hang-up, which the next call reports) or
// `deadline` passes; false on the deadline.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, ms_until(deadline));
    if (r > 0) return true;
    if (r == 0 || errno != EINTR) return false;
  }
}

void close_socket(int fd) {
  ::shutdown(fd, SHUT_WR);  // a FIN after what was written, before close
  ::close(fd);
}

// One client connection between requests: what it has sent so far and how long it may take.
struct Conn {
  int fd = -1;
  std::string in;                 // received, not yet handed to httplib: a head, maybe a body, maybe more
  Clock::time_point since;        // waiting since (accepted, kept alive, or first byte of this request)
  Clock::time_point deadline;     // closed at this time unless a whole request is there
  size_t end = 0;                 // once whole: where the request ends in `in`
  size_t served = 0;              // requests answered on this connection
  bool fresh = true;              // `in` not yet looked at
  bool closing = false;           // refused: its input is drained (so the refusal is read, not reset) until the deadline
  size_t drained = 0;
};
constexpr double kDrainSeconds = 2;
// A client sends its whole body before it reads the refusal: draining less than that body
// closes on unread input, which resets the connection and loses the refusal (a 3 MiB body
// against the 1 MiB limit did, when the kernel's buffers did not take it all at once).
constexpr size_t kDrainBytes = 16 << 20;

bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return std::tolower(x) == std::tolower(y); });
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

enum class Arrival { partial, whole, bad, head_too_large, body_too_large };

struct Look {
  Arrival arrival = Arrival::partial;
  size_t end = 0;              // whole: where the request ends in `in` (a pipelined next one may follow)
  bool wants_continue = false;  // the client waits for "100 Continue" before it sends the body
};

bool is_hex(std::string_view s) {
  return !s.empty() && s.size() <= 8 && std::all_of(s.begin(), s.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
}

// A chunked body that starts at `pos` in `in`: whole (ends at .end), partial, bad, or too large.
Look chunked_body(const std::string& in, size_t pos, const HttpLimits& lim) {
  const size_t start = pos;
  size_t data = 0;
  for (;;) {
    if (in.size() - start > lim.max_body + (64 << 10)) return {Arrival::body_too_large};  // framing counts too
    const size_t eol = in.find("\r\n", pos);
    if (eol == std::string::npos) return {in.size() - pos > 1024 ? Arrival::bad : Arrival::partial};
    const std::string_view line(in.data() + pos, eol - pos);
    const auto hex = trim(line.substr(0, line.find(';')));  // chunk extensions are ignored
    if (!is_hex(hex)) return {Arrival::bad};
    const size_t n = std::stoul(std::string(hex), nullptr, 16);
    if (n == 0) {  // the last chunk, trailer lines, a blank line
      const size_t blank = in.find("\r\n\r\n", eol);
      if (blank == std::string::npos) return {Arrival::partial};
      return {Arrival::whole, blank + 4};
    }
    if ((data += n) > lim.max_body) return {Arrival::body_too_large};
    pos = eol + 2 + n + 2;
    if (in.size() < pos) return {Arrival::partial};
    if (in.compare(pos - 2, 2, "\r\n") != 0) return {Arrival::bad};
  }
}

// Whether `in` starts with a whole request: its head and its body (Content-Length or chunked).
// Range, If-Range and Expect lines are cut out of `in`: ranges are not served, and the reader
// answers Expect: 100-continue itself.
Look look_at(std::string& in, const HttpLimits& lim) {
  const size_t blank = in.find("\r\n\r\n");
  if (blank == std::string::npos) return {in.size() > lim.max_head ? Arrival::head_too_large : Arrival::partial};
  if (blank + 4 > lim.max_head) return {Arrival::head_too_large};
  size_t head_end = blank + 2;  // just past the last header line's CRLF
  std::optional<uint64_t> length;
  int transfer_encodings = 0;
  bool chunked = false, bad = false, wants_continue = false;
  for (size_t line = in.find("\r\n") + 2; line < head_end;) {
    const size_t eol = in.find("\r\n", line);
    const std::string_view l(in.data() + line, eol - line);
    const size_t colon = l.find(':');
    const auto name = trim(l.substr(0, colon)), value = colon == l.npos ? std::string_view() : trim(l.substr(colon + 1));
    if (iequals(name, "range") || iequals(name, "if-range") || iequals(name, "expect")) {
      wants_continue |= iequals(name, "expect") && iequals(value, "100-continue");
      in.erase(line, eol + 2 - line);
      head_end -= eol + 2 - line;
      continue;
    }
    if (iequals(name, "transfer-encoding")) {
      ++transfer_encodings;
      chunked = iequals(value, "chunked");  // what httplib reads; other codings are refused
    } else if (iequals(name, "content-length")) {
      const bool digits = !value.empty() && value.size() <= 18 &&
                          std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; });
      bad |= !digits || length.has_value();
      if (digits) length = std::stoull(std::string(value));
    }
    line = eol + 2;
  }
  const size_t body = head_end + 2;
  if (transfer_encodings > 0) {
    if (transfer_encodings > 1 || !chunked) return {Arrival::bad};
    Look b = chunked_body(in, body, lim);
    b.wants_continue = wants_continue && b.arrival == Arrival::partial;
    return b;
  }
  if (bad) return {Arrival::bad};
  const uint64_t n = length.value_or(0);  // no length, no body (RFC 9112 6.3)
  if (n > lim.max_body) return {Arrival::body_too_large};
  if (in.size() < body + n) return {Arrival::partial, 0, wants_continue};
  return {Arrival::whole, body + n};
}

// A JSON error reply written by the reader itself (the request never reaches httplib).
std::string refusal(int status, const char* reason, const std::string& message, const httplib::Headers& headers) {
  const std::string body = "{\"error\":\"" + message + "\"}";
  std::string r = "HTTP/1.1 " + std::to_string(status) + " " + reason + "\r\n";
  for (const auto& [k, v] : headers) r += k + ": " + v + "\r\n";
  return r + "Content-Type: application/json; charset=utf-8\r\nContent-Length: " + std::to_string(body.size()) +
         "\r\nConnection: close\r\n\r\n" + body;
}

void address_of(int fd, bool remote, std::string& ip, int& port) {
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  if ((remote ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) : ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len)) != 0)
    return;
  char buf[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET) {
    const auto* s = reinterpret_cast<const sockaddr_in*>(&a);
    ::inet_ntop(AF_INET, &s->sin_addr, buf, sizeof(buf));
    port = ntohs(s->sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto* s = reinterpret_cast<const sockaddr_in6*>(&a);
    ::inet_ntop(AF_INET6, &s->sin6_addr, buf, sizeof(buf));
    port = ntohs(s->sin6_port);
  }
  ip = buf;
}

// What httplib reads a request from (the bytes the reader collected, up to the request's end:
// it never waits on the client) and writes its reply to.
class ConnStream : public httplib::Stream {
 public:
  ConnStream(const Conn& c, const HttpLimits& lim) : c_(c), lim_(lim) {}
  bool is_readable() const override { return pos_ < c_.end; }
  bool is_writable() const override { return wait_for(c_.fd, POLLOUT, after(Clock::now(), lim_.write_seconds)); }
  ssize_t read(char* ptr, size_t size) override {
    const size_t n = std::min(size, c_.end - pos_);
    std::memcpy(ptr, c_.in.data() + pos_, n);
    pos_ += n;
    return static_cast<ssize_t>(n);
  }
  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    return ::send(c_.fd, ptr, size, MSG_NOSIGNAL);
  }
  void get_remote_ip_and_port(std::string& ip, int& port) const override { address_of(c_.fd, true, ip, port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { address_of(c_.fd, false, ip, port); }
  socket_t socket() const override { return c_.fd; }

 private:
  const Conn& c_;
  const HttpLimits& lim_;
  size_t pos_ = 0;
};

// httplib's listening thread runs each accepted socket's task at once: the task only hands
// the socket to the reader.
struct InlineQueue : httplib::TaskQueue {
  void enqueue(std::function<void()> fn) override { fn(); }
  void shutdown() override {}
};

}  // namespace

struct GuardedHttpServer::Impl {
  GuardedHttpServer& server;
  const HttpLimits lim;
  const httplib::Headers headers;
  const int wake = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  std::mutex mu;  // guards what follows
  std::condition_variable work;
  std::vector<Conn> inbox;  // for the reader: accepted, or kept alive after a request
  std::deque<Conn> queue;   // whole requests for the workers
  std::set<int> serving;    // sockets a worker is on
  bool stopping = false;
  std::thread reader;
  std::vector<std::thread> workers;

  Impl(GuardedHttpServer& s, const HttpLimits& l, const httplib::Headers& h) : server(s), lim(l), headers(h) {}

  void hand_to_reader(Conn c) {
    {
      std::lock_guard lk(mu);
      if (!stopping) {
        inbox.push_back(std::move(c));
        c.fd = -1;
      }
    }
    if (c.fd >= 0) ::close(c.fd);
    const uint64_t one = 1;
    (void)!::write(wake, &one, sizeof(one));
  }

  // Answers `c` with an error and drains it until it closes or kDrainSeconds pass.
  void refuse(Conn& c, int status, const char* reason, const std::string& message) {
    const std::string r = refusal(status, reason, message, headers);
    (void)!::send(c.fd, r.data(), r.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    ::shutdown(c.fd, SHUT_WR);
    c.closing = true;
    c.in = std::string();
    c.deadline = after(Clock::now(), kDrainSeconds);
  }

  bool to_worker(Conn& c) {
    std::lock_guard lk(mu);
    if (stopping || queue.size() >= lim.max_queued) return false;
    queue.push_back(std::move(c));
    work.notify_one();
    return true;
  }

  void read_requests() {
    std::vector<Conn> waiting;
    std::vector<pollfd> fds;
    std::vector<char> buf(64 << 10);
    for (;;) {
      {
        std::lock_guard lk(mu);
        if (stopping) break;
        for (auto& c : inbox) waiting.push_back(std::move(c));
        inbox.clear();
      }
      // Past the bounds the longest-waiting connection goes: most likely one trickling its
      // request, as a real client sends a request at once.
      size_t buffered = 0;
      for (const auto& c : waiting) buffered += c.in.size();
      while (waiting.size() > lim.max_waiting || buffered > lim.max_buffered) {
        auto oldest = std::min_element(waiting.begin(), waiting.end(), [](const Conn& a, const Conn& b) { return a.since < b.since; });
        buffered -= oldest->in.size();
        ::close(oldest->fd);
        waiting.erase(oldest);
      }

      fds.assign(1, pollfd{wake, POLLIN, 0});
      auto next = after(Clock::now(), 1);
      for (const auto& c : waiting) {
        fds.push_back(pollfd{c.fd, POLLIN, 0});
        next = std::min(next, c.deadline);
      }
      if (::poll(fds.data(), fds.size(), ms_until(next)) < 0 && errno != EINTR) break;
      if (fds[0].revents) {
        uint64_t n;
        (void)!::read(wake, &n, sizeof(n));
      }

      const auto now = Clock::now();
      std::vector<Conn> still;
      for (size_t i = 0; i < waiting.size(); ++i) {
        Conn& c = waiting[i];
        bool arrived = c.fresh;
        c.fresh = false;
        if (fds[i + 1].revents) {
          const ssize_t n = ::recv(c.fd, buf.data(), buf.size(), MSG_DONTWAIT);
          if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            ::close(c.fd);
            continue;
          }
          if (n > 0 && c.closing) c.drained += static_cast<size_t>(n);
          if (n > 0 && !c.closing) {
            if (c.in.empty()) {  // a request starts: its time runs from here
              c.since = now;
              c.deadline = after(now, lim.request_seconds);
            }
            c.in.append(buf.data(), static_cast<size_t>(n));
            arrived = true;
          }
        }
        if (c.closing) {
          if (now >= c.deadline || c.drained > kDrainBytes) ::close(c.fd);
          else still.push_back(std::move(c));
          continue;
        }
        const Look look = arrived ? look_at(c.in, lim) : Look{};
        const Arrival a = look.arrival;
        if (look.wants_continue) {
          static constexpr char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
          (void)!::send(c.fd, kContinue, sizeof(kContinue) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        if (a == Arrival::whole) {
          c.end = look.end;
          if (to_worker(c)) continue;
          refuse(c, 503, "Service Unavailable", "the server is busy; try again in a moment");
        } else if (a == Arrival::bad) {
          refuse(c, 400, "Bad Request", "the request's framing (Content-Length, Transfer-Encoding or chunks) is not valid");
        } else if (a == Arrival::head_too_large) {
          refuse(c, 431, "Request Header Fields Too Large",
                 "the request line and headers are larger than " + std::to_string(lim.max_head) + " bytes");
        } else if (a == Arrival::body_too_large) {
          refuse(c, 413, "Payload Too Large", "the request body is larger than " + std::to_string(lim.max_body) + " bytes");
        } else if (now >= c.deadline) {
          if (c.in.empty()) {  // idle: closed without a word, as keep-alive allows
            ::close(c.fd);
            continue;
          }
          refuse(c, 408, "Request Timeout", "the request took too long to arrive");
        }
        still.push_back(std::move(c));
      }
      waiting.swap(still);
    }
    for (auto& c : waiting) ::close(c.fd);
  }

  void serve_requests() {
    for (;;) {
      Conn c;
      {
        std::unique_lock lk(mu);
        work.wait(lk, [&] { return stopping || !queue.empty(); });
        if (stopping) return;
        c = std::move(queue.front());
        queue.pop_front();
        serving.insert(c.fd);
      }
      const bool last = ++c.served >= lim.max_requests_per_connection;
      bool closed = false;
      ConnStream s(c, lim);
      const bool ok = server.process_request(s, last, closed, nullptr);
      {
        std::lock_guard lk(mu);
        serving.erase(c.fd);
      }
      if (!ok || closed || last) {
        close_socket(c.fd);
        continue;
      }
      c.in.erase(0, c.end);  // what follows is the start of a pipelined next request
      c.fresh = true;
      c.since = Clock::now();
      c.deadline = after(c.since, lim.idle_seconds);
      hand_to_reader(std::move(c));
    }
  }

  void close() {
    {
      std::lock_guard lk(mu);
      if (stopping) return;
      stopping = true;
      for (int fd : serving) ::shutdown(fd, SHUT_RDWR);  // ends a worker's wait on a client not reading
      for (auto& c : queue) ::close(c.fd);
      for (auto& c : inbox) ::close(c.fd);
      queue.clear();
      inbox.clear();
    }
    const uint64_t one = 1;
    (void)!::write(wake, &one, sizeof(one));
    work.notify_all();
    if (reader.joinable()) reader.join();
    for (auto& t : workers) t.join();
    ::close(wake);
  }
};

GuardedHttpServer::GuardedHttpServer(const HttpLimits& limits, const httplib::Headers& headers)
    : impl_(std::make_unique<Impl>(*this, limits, headers)) {
  set_default_headers(headers);
  set_payload_max_length(limits.max_body);
  set_keep_alive_max_count(limits.max_requests_per_connection);
  set_keep_alive_timeout(static_cast<time_t>(limits.idle_seconds));  // what the Keep-Alive header says
  new_task_queue = [] { return new InlineQueue; };
  impl_->reader = std::thread([this] { impl_->read_requests(); });
  for (size_t i = 0; i < limits.workers; ++i) impl_->workers.emplace_back([this] { impl_->serve_requests(); });
}

GuardedHttpServer::~GuardedHttpServer() { close(); }

void GuardedHttpServer::close() { impl_->close(); }

bool GuardedHttpServer::process_and_close_socket(socket_t sock) {
  Conn c;
  c.fd = sock;
  c.since = Clock::now();
  c.deadline = after(c.since, impl_->lim.request_seconds);
  impl_->hand_to_reader(std::move(c));
  return true;
}

}  // namespace rlhf
