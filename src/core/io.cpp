#include "core/io.h"

#include <fcntl.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
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
  const std::string raw = read_file(path);
  auto gzip_at = [&](size_t i) {
    return raw.size() >= i + 2 && static_cast<unsigned char>(raw[i]) == 0x1f &&
           static_cast<unsigned char>(raw[i + 1]) == 0x8b;
  };
  if (!gzip_at(0)) return raw;
  z_stream zs{};
  check(inflateInit2(&zs, 16 + MAX_WBITS) == Z_OK, path.string() + ": zlib init failed");
  auto fail = [&](const std::string& what) {
    inflateEnd(&zs);
    throw Error(path.string() + ": " + what);
  };
  size_t fed = 0;  // bytes handed to zlib so far; its avail_in is 32-bit, so files > 4 GB go in parts
  std::string out;
  char buf[1 << 16];
  for (;;) {
    if (zs.avail_in == 0 && fed < raw.size()) {
      zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data() + fed));
      zs.avail_in = static_cast<uInt>(std::min<size_t>(raw.size() - fed, size_t{1} << 30));
      fed += zs.avail_in;
    }
    zs.next_out = reinterpret_cast<Bytef*>(buf);
    zs.avail_out = sizeof(buf);
    const int rc = inflate(&zs, Z_NO_FLUSH);
    const size_t at = fed - zs.avail_in;  // the next byte zlib has not read
    if (rc == Z_BUF_ERROR && at == raw.size()) fail("truncated gzip file");
    if (rc != Z_OK && rc != Z_STREAM_END) fail("corrupt gzip data");
    out.append(buf, sizeof(buf) - zs.avail_out);
    if (rc == Z_STREAM_END) {
      // `cat a.gz b.gz` is one valid gzip file of two members: read them all, as zcat does.
      // Anything else after a member is damage, not data to drop silently.
      if (at == raw.size()) break;
      if (!gzip_at(at))
        fail("trailing garbage after the gzip data (" + std::to_string(raw.size() - at) + " bytes at offset " +
             std::to_string(at) + ")");
      inflateReset(&zs);
    } else if (at == raw.size() && zs.avail_out != 0) {
      fail("truncated gzip file");
    }
  }
  inflateEnd(&zs);
  return out;
}

}  // namespace rlhf
