// safetensors reader and writer. The header is checked against the file before any tensor is
// copied (each tensor's bytes inside the data and its own), so a truncated or corrupt file is
// an Error naming the file and the tensor.
#include "formats/safetensors.h"

#include <cstring>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/io.h"
#include "formats/binary_file.h"

namespace rlhf {
namespace {

using json = nlohmann::json;

struct DtypeName {
  const char* name;
  torch::ScalarType type;
};
const DtypeName kDtypes[] = {
    {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16},
    {"BF16", torch::kBFloat16}, {"I64", torch::kInt64},  {"I32", torch::kInt32},
    {"I16", torch::kInt16},    {"I8", torch::kInt8},     {"U8", torch::kUInt8},
    {"BOOL", torch::kBool},
};

// A header larger than this is not a model header but a corrupt length field.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

std::string supported_dtypes() {
  std::string s;
  for (const auto& d : kDtypes) s += (s.empty() ? "" : ", ") + std::string(d.name);
  return s;
}

}  // namespace

TensorMap read_safetensors(const std::filesystem::path& path) try {
  MappedFile file(path);
  const std::string& name = file.name();
  ByteReader r(file.data(), file.size(), name);
  if (file.size() < 8)
    throw Error(name + ": truncated safetensors file (" + std::to_string(file.size()) +
                " bytes, less than the 8-byte header length)");
  const uint64_t header_len = r.read<uint64_t>("the header length");
  if (header_len > file.size() - 8 || header_len > kMaxHeaderBytes)
    throw Error(name + ": corrupt or truncated safetensors file: header length " +
                std::to_string(header_len) + " runs past the end of the file (" +
                std::to_string(file.size()) + " bytes)");
  json header;
  try {
    header = json::parse(r.bytes(header_len, "the JSON header"));
  } catch (const json::exception& e) {
    throw Error(name + ": corrupt safetensors header (not valid JSON: " + e.what() + ")");
  }
  if (!header.is_object()) throw Error(name + ": corrupt safetensors header (not a JSON object)");
  const uint8_t* data = file.data() + 8 + header_len;
  const uint64_t data_size = file.size() - 8 - header_len;

  // 1. Every entry checked, and no two sharing bytes, before anything is allocated.
  struct Entry {
    std::string name;
    torch::ScalarType type;
    std::vector<int64_t> shape;
    uint64_t begin, nbytes;
  };
  std::vector<Entry> entries;
  std::vector<ByteRange> ranges;
  for (const auto& [tname, info] : header.items()) {
    if (tname == "__metadata__") continue;
    const std::string where = name + ": tensor '" + tname + "'";
    if (!info.is_object() || !info.contains("dtype") || !info.contains("shape") ||
        !info.contains("data_offsets"))
      throw Error(where + ": header entry needs dtype, shape and data_offsets");
    const json& jd = info.at("dtype");
    const json& js = info.at("shape");
    const json& jo = info.at("data_offsets");
    if (!jd.is_string()) throw Error(where + ": dtype must be a string");
    const std::string dtype = jd.get<std::string>();
    const DtypeName* dt = nullptr;
    for (const auto& d : kDtypes)
      if (dtype == d.name) dt = &d;
    if (!dt) throw Error(where + ": unsupported dtype " + dtype + " (supported: " + supported_dtypes() + ")");

    if (!js.is_array()) throw Error(where + ": shape must be a list of integers");
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (const json& d : js) {
      if (!d.is_number_unsigned()) throw Error(where + ": shape must be a list of non-negative integers");
      uint64_t n = d.get<uint64_t>();
      // Keeps numel * itemsize inside 64 bits; anything this big cannot fit in the file anyway.
      if (n > (1ull << 40) || (n && numel > (1ull << 40) / n))
        throw Error(where + ": absurd shape " + js.dump());
      numel *= n;
      shape.push_back(static_cast<int64_t>(n));
    }
    if (!jo.is_array() || jo.size() != 2 || !jo[0].is_number_unsigned() || !jo[1].is_number_unsigned())
      throw Error(where + ": data_offsets must be [begin, end]");
    const uint64_t begin = jo[0].get<uint64_t>(), end = jo[1].get<uint64_t>();
    if (begin > end || end > data_size)
      throw Error(where + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                  "] run past the end of the data (" + std::to_string(data_size) +
                  " bytes): the file is truncated or corrupt");
    const uint64_t nbytes = numel * c10::elementSize(dt->type);
    if (end - begin != nbytes)
      throw Error(where + ": data_offsets span " + std::to_string(end - begin) + " bytes but " +
                  dtype + " " + js.dump() + " needs " + std::to_string(nbytes));

    entries.push_back({tname, dt->type, std::move(shape), begin, nbytes});
    ranges.push_back({tname, begin, end});
  }
  check_disjoint(std::move(ranges), name);

  // 2. Copied into owned, aligned memory: the mapping goes away when we return.
  TensorMap out;
  for (const Entry& e : entries) {
    torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(e.type));
    if (e.nbytes) std::memcpy(t.data_ptr(), data + e.begin, e.nbytes);
    out[e.name] = std::move(t);
  }
  return out;
} catch (...) {
  rethrow_naming(path.string());  // std::bad_alloc and the like name the file too
}

void write_safetensors(const std::filesystem::path& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // Contiguous CPU copies, laid out one after another in name order.
  std::vector<std::pair<std::string, torch::Tensor>> items;
  json header = json::object();
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    check(t.defined(), path.string() + ": tensor '" + name + "' is undefined");
    const DtypeName* dt = nullptr;
    for (const auto& d : kDtypes)
      if (t.scalar_type() == d.type) dt = &d;
    check(dt != nullptr, path.string() + ": tensor '" + name + "' has dtype " +
                             std::string(c10::toString(t.scalar_type())) + ", which safetensors cannot hold here");
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    const uint64_t nbytes = c.numel() * c.element_size();
    header[name] = {{"dtype", dt->name}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    items.emplace_back(name, std::move(c));
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');  // the data starts 8-byte aligned, as the reference writer does
  write_file_atomic(path, [&](std::ostream& out) {
    const uint64_t n = h.size();
    out.write(reinterpret_cast<const char*>(&n), 8);
    out.write(h.data(), h.size());
    for (const auto& [name, c] : items)
      out.write(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
  });
}

}  // namespace rlhf
