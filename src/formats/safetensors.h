// safetensors: an 8-byte little-endian header length, a JSON header
// {name: {dtype, shape, data_offsets:[begin,end]}, "__metadata__": {...}}, then raw data.
#pragma once
#include <filesystem>
#include <map>
#include <string>

#include "model/tensor_map.h"

namespace rlhf {

// Reads every tensor (F32, F16, BF16, F64, I64, I32 ... as their torch dtype) into CPU memory.
TensorMap read_safetensors(const std::filesystem::path& path);
// Writes tensors (contiguous CPU copies are made as needed), atomically.
void write_safetensors(const std::filesystem::path& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace rlhf
