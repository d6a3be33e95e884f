#include "core/io.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>

#include <fstream>
#include <sstream>

#include "core/error.h"

namespace rlhf {

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  check(in.good(), path.string() + ": cannot open file for reading");
  std::ostringstream ss;
  ss << in.rdbuf();
  check(!in.bad(), path.string() + ": read error");
  return ss.str();
}

void write_file_atomic(const std::filesystem::path& path,
                       const std::function<void(std::ostream&)>& write) {
  auto tmp = path;
  tmp += ".tmp." + std::to_string(::getpid());
  try {
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      check(out.good(), tmp.string() + ": cannot open file for writing");
      write(out);
      out.flush();
      check(out.good(), tmp.string() + ": write failed (disk full?)");
    }
    sync_path(tmp);
    std::filesystem::rename(tmp, path);
    sync_path(path.has_parent_path() ? path.parent_path() : std::filesystem::path("."));
  } catch (...) {
    std::error_code ec;
    std::filesystem::remove(tmp, ec);
    throw;
  }
}

void write_file_atomic(const std::filesystem::path& path, const std::string& contents) {
  write_file_atomic(path, [&](std::ostream& out) { out.write(contents.data(), contents.size()); });
}

void sync_path(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  check(fd >= 0, path.string() + ": cannot open to sync: " + std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  check(rc == 0, path.string() + ": fsync failed: " + std::strerror(err));
}

std::string read_maybe_gzip(const std::filesystem::path& path) {
  std::string raw = read_file(path);
  if (raw.size() < 2 || static_cast<unsigned char>(raw[0]) != 0x1f ||
      static_cast<unsigned char>(raw[1]) != 0x8b)
    return raw;
  z_stream zs{};
  check(inflateInit2(&zs, 16 + MAX_WBITS) == Z_OK, path.string() + ": zlib init failed");
  zs.next_in = reinterpret_cast<Bytef*>(raw.data());
  zs.avail_in = static_cast<uInt>(raw.size());
  std::string out;
  char buf[1 << 16];
  int rc = Z_OK;
  while (rc != Z_STREAM_END) {
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof(buf);
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      inflateEnd(&zs);
      throw Error(path.string() + ": corrupt gzip data");
    }
    out.append(buf, sizeof(buf) - zs.avail_out);
    if (rc == Z_OK && zs.avail_in == 0 && zs.avail_out != 0) {
      inflateEnd(&zs);
      throw Error(path.string() + ": truncated gzip file");
    }
  }
  inflateEnd(&zs);
  return out;
}

}  // namespace rlhf
