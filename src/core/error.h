// One exception type for everything a user can fix (bad file, bad flag, bad shape). The CLI
// prints its message as one line and exits non-zero; messages name the file/field at fault.
#pragma once
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

}  // namespace rlhf
