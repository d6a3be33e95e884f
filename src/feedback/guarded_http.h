// An httplib::Server that a few clients cannot stall or flood. One poll() thread reads every
// connection's requests and hands one to a worker only once it has arrived whole (head and
// body, Content-Length or chunked), so no worker ever waits on a client's sending; what a
// client sends is bounded in size and time, and so is the number of connections kept.
// Why: httplib 0.11 (Debian's) gives a connection a worker thread for as long as it is open and
// times out only single reads, so clients trickling a byte every 2 s held every worker; it also
// takes any number of headers, reads chunked bodies without the payload limit and answers a
// Range of thousands of ranges with thousands of copies of the content (issue 11).
#pragma once
#include <httplib.h>

#include <cstddef>
#include <memory>

namespace rlhf {

struct HttpLimits {
  size_t max_head = 16 << 10;        // request line and headers, bytes (431 beyond)
  size_t max_body = 1 << 20;         // request body, bytes (413 beyond; chunk framing: 64 KiB more)
  double request_seconds = 10;       // to send a whole request, from its first byte (408 after)
  double idle_seconds = 30;          // a kept-alive connection waiting for its next request
  double write_seconds = 10;         // a reply waiting for the client to read it
  size_t max_waiting = 256;          // connections waiting for a whole request; past this the longest-waiting is closed
  size_t max_buffered = 64 << 20;    // bytes held for waiting connections, all together; the same past this
  size_t workers = 8;                // threads that run handlers (SQLite serializes the store anyway)
  size_t max_queued = 64;            // whole requests waiting for a worker; 503 past this
  size_t max_requests_per_connection = 1000;
};

// Use as an httplib::Server: register handlers, bind, listen_after_bind() on a thread; stop()
// (httplib's) and then close() to end the reader and workers. Ranges are not served: Range
// lines are dropped before httplib sees them (the page is small; a multi-range reply only
// amplifies). A request without Content-Length or chunks has no body (httplib would read on
// to the end of the connection).
class GuardedHttpServer : public httplib::Server {
 public:
  explicit GuardedHttpServer(const HttpLimits& limits = {}, const httplib::Headers& headers = {});
  ~GuardedHttpServer() override;
  // After stop() and the listening thread's return: ends the reader and the workers, closes
  // every connection. Idempotent.
  void close();

 private:
  bool process_and_close_socket(socket_t sock) override;  // called on the listening thread
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace rlhf
