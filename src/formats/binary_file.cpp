// MappedFile: mmap of a whole model file, so multi-gigabyte checkpoints are not read twice.
#include "formats/binary_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

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

}  // namespace rlhf
