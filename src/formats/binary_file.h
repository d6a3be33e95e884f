// Read-only memory map of a model file plus a bounds-checked little-endian cursor over it,
// shared by the GGUF, llama2.c and safetensors readers: no read can run past the end.
#pragma once
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.h"

namespace rlhf {

// The whole file mapped read-only (no copy; tensors are copied out of it by the readers).
class MappedFile {
 public:
  explicit MappedFile(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& name() const { return name_; }

 private:
  std::string name_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// Sequential reads from a byte range; running past the end throws Error naming the file
// and `what` (the field being read), e.g. "model.gguf: truncated while reading metadata key 'x'".
class ByteReader {
 public:
  ByteReader(const uint8_t* data, uint64_t size, std::string file)
      : data_(data), size_(size), file_(std::move(file)) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }
  const std::string& file() const { return file_; }

  void need(uint64_t n, const std::string& what) const {
    if (n > remaining())
      throw Error(file_ + ": truncated file while reading " + what + " (needs " + std::to_string(n) +
                  " bytes at offset " + std::to_string(pos_) + ", file has " +
                  std::to_string(size_) + ")");
  }
  template <typename T>
  T read(const std::string& what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, data_ + pos_, sizeof(T));  // unaligned-safe; the host is little-endian
    pos_ += sizeof(T);
    return v;
  }
  std::string_view bytes(uint64_t n, const std::string& what) {
    need(n, what);
    std::string_view v(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return v;
  }
  void skip(uint64_t n, const std::string& what) { bytes(n, what); }
  void seek(uint64_t p, const std::string& what) {
    if (p > size_)
      throw Error(file_ + ": truncated file: " + what + " starts at offset " + std::to_string(p) +
                  ", past the end of the file (" + std::to_string(size_) + " bytes)");
    pos_ = p;
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint64_t pos_ = 0;
  std::string file_;
};

// Where one tensor's bytes lie in a file: [begin, end), from any origin shared by the file's
// tensors.
struct ByteRange {
  std::string tensor;
  uint64_t begin = 0, end = 0;
};

// Throws Error naming the file and both tensors when two ranges overlap. Every tensor must
// have bytes of its own: entries that alias the same bytes would let a small file expand
// into gigabytes of copies before any other check could notice.
void check_disjoint(std::vector<ByteRange> ranges, const std::string& file);

}  // namespace rlhf
