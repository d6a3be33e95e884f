// File helpers shared by every loader and writer: whole-file reads with clear errors, and
// atomic writes (temporary file + rename) so an interrupted run never leaves half a file.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

namespace rlhf {

// Reads a whole file; throws Error("<path>: cannot open ...") when it is missing/unreadable.
std::string read_file(const std::filesystem::path& path);

// Writes `path` atomically and durably: `write` fills a stream on `path.tmp.<pid>`, which is
// flushed, synced to disk (fsync), closed and renamed over `path`, and the folder is synced so
// the rename survives a power loss too. On any exception the temporary file is removed and
// `path` is left as it was.
void write_file_atomic(const std::filesystem::path& path,
                       const std::function<void(std::ostream&)>& write);
void write_file_atomic(const std::filesystem::path& path, const std::string& contents);

// fsync of a file or folder (a folder: so renames and creations inside it are on disk). Error
// naming the path when it fails.
void sync_path(const std::filesystem::path& path);

// Reads a gzip-compressed or plain file (detected by magic bytes) into memory. A gzip file is
// read to its end, every member (as zcat does); bytes after the last member that are not
// another member, and a cut-off member, are Errors naming the file.
std::string read_maybe_gzip(const std::filesystem::path& path);

}  // namespace rlhf
