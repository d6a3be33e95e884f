// One exception type for everything a user can fix (bad file, bad flag, bad shape). The CLI
// prints its message as one line and exits non-zero; messages name the file/field at fault.
#pragma once
#include <new>
#include <stdexcept>
#include <string>

namespace rlhf {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Throws Error when `cond` is false. Usage: check(n > 0, path + ": empty tensor list");
inline void check(bool cond, const std::string& message) {
  if (!cond) throw Error(message);
}

// The catch (...) of a loader (a function-try-block): rethrows the exception in flight, an
// Error as it is and anything else as an Error naming `file`: std::bad_alloc (the file asks
// for more memory than there is) or a library's error would otherwise leave the user
// guessing which of several files failed.
[[noreturn]] inline void rethrow_naming(const std::string& file) {
  try {
    throw;
  } catch (const Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw Error(file + ": out of memory while loading it (std::bad_alloc)");
  } catch (const std::exception& e) {  // torch's errors carry a backtrace after the first line
    const std::string what = e.what();
    throw Error(file + ": " + what.substr(0, what.find('\n')));
  }
}

}  // namespace rlhf
