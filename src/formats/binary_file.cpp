// MappedFile: mmap of a whole model file, so multi-gigabyte checkpoints are not read twice.
#include "formats/binary_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <tuple>

namespace rlhf {

MappedFile::MappedFile(const std::filesystem::path& path) : name_(path.string()) {
  int fd = ::open(name_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(name_ + ": cannot open file for reading (" + std::strerror(errno) + ")");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(name_ + ": not a regular file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      throw Error(name_ + ": cannot map file into memory (" + std::strerror(err) + ")");
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  ::close(fd);  // the mapping keeps the file alive
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

void check_disjoint(std::vector<ByteRange> ranges, const std::string& file) {
  std::erase_if(ranges, [](const ByteRange& r) { return r.begin == r.end; });  // empty tensors own no bytes
  std::sort(ranges.begin(), ranges.end(), [](const ByteRange& a, const ByteRange& b) {
    return std::tie(a.begin, a.end, a.tensor) < std::tie(b.begin, b.end, b.tensor);
  });
  const ByteRange* reach = nullptr;  // the range that ends furthest of those seen so far
  for (const ByteRange& r : ranges) {
    if (reach && r.begin < reach->end)
      throw Error(file + ": corrupt file: the data of tensor '" + r.tensor + "' (bytes " + std::to_string(r.begin) +
                  ".." + std::to_string(r.end) + ") overlaps that of tensor '" + reach->tensor + "' (bytes " +
                  std::to_string(reach->begin) + ".." + std::to_string(reach->end) + ")");
    if (!reach || r.end > reach->end) reach = &r;
  }
}

}  // namespace rlhf
