// Mask file reading/writing. A mask file is a tiny safetensors file with one uint8
// tensor, so it is parsed here directly (header JSON + raw bytes) instead of through
// engine/model's memory-mapped reader: cache/ then depends on nothing but absl/json,
// and SaveMask needs a writer that engine/model does not have.

#include <cstring>
#include <fstream>
#include <iterator>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "cache/mask.h"
#include "nlohmann/json.hpp"

namespace leank::cache {
namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 1 << 24;

absl::Status Bad(const std::filesystem::path& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("mask file ", path.string(), ": ", what));
}

absl::StatusOr<int> PositiveInt(const std::filesystem::path& path,
                                const std::map<std::string, std::string>& meta,
                                const std::string& key, int default_value) {
  auto it = meta.find(key);
  if (it == meta.end()) return default_value;
  int value = 0;
  if (!absl::SimpleAtoi(it->second, &value) || value <= 0) {
    return Bad(path, absl::StrCat("metadata \"", key, "\" must be a positive integer, got \"",
                                  it->second, "\""));
  }
  return value;
}

}  // namespace

absl::StatusOr<Mask> ReadMask(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("mask file ", path.string(), ": cannot open"));
  }
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (bytes.size() < 8) return Bad(path, "shorter than the 8-byte safetensors header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(bytes[i]);
  if (header_len > kMaxHeaderBytes || 8 + header_len > bytes.size()) {
    return Bad(path,
               absl::StrCat("header length ", header_len, " exceeds the file size ", bytes.size()));
  }
  json header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + header_len, nullptr, false);
  if (header.is_discarded() || !header.is_object()) {
    return Bad(path, "header is not a JSON object");
  }
  const uint64_t data_size = bytes.size() - 8 - header_len;
  const char* data = bytes.data() + 8 + header_len;

  // Metadata: string -> string.
  std::map<std::string, std::string> meta;
  if (header.contains("__metadata__")) {
    const json& m = header["__metadata__"];
    if (!m.is_object()) return Bad(path, "__metadata__ is not an object");
    for (auto it = m.begin(); it != m.end(); ++it) {
      if (!it.value().is_string()) {
        return Bad(path, absl::StrCat("metadata \"", it.key(), "\" is not a string"));
      }
      meta[it.key()] = it.value().get<std::string>();
    }
  }
  auto format = meta.find("format");
  if (format == meta.end()) {
    return Bad(path, absl::StrCat("metadata has no \"format\" (expected \"", kMaskFormat, "\")"));
  }
  if (format->second != kMaskFormat) {
    return Bad(path,
               absl::StrCat("format is \"", format->second, "\", expected \"", kMaskFormat, "\""));
  }

  // The tensor.
  if (!header.contains(kMaskTensorName)) {
    return Bad(path, absl::StrCat("no tensor \"", kMaskTensorName, "\""));
  }
  const json& t = header[kMaskTensorName];
  if (!t.is_object() || !t.contains("dtype") || !t.contains("shape") ||
      !t.contains("data_offsets")) {
    return Bad(path,
               absl::StrCat("tensor \"", kMaskTensorName, "\" lacks dtype, shape or data_offsets"));
  }
  if (!t["dtype"].is_string() || (t["dtype"] != "U8" && t["dtype"] != "BOOL")) {
    return Bad(path, absl::StrCat("tensor \"", kMaskTensorName, "\" has dtype ", t["dtype"].dump(),
                                  ", expected \"U8\""));
  }
  const json& shape_json = t["shape"];
  if (!shape_json.is_array() || shape_json.size() != 3) {
    return Bad(path, absl::StrCat("tensor \"", kMaskTensorName, "\" has shape ", shape_json.dump(),
                                  ", expected [layers, kv_heads, head_dim]"));
  }
  int dims[3];
  for (int i = 0; i < 3; ++i) {
    if (!shape_json[i].is_number_integer() || shape_json[i].get<int64_t>() <= 0 ||
        shape_json[i].get<int64_t>() > (1 << 20)) {
      return Bad(path, absl::StrCat("tensor \"", kMaskTensorName, "\" has shape ",
                                    shape_json.dump(), ": dimensions must be positive"));
    }
    dims[i] = shape_json[i].get<int>();
  }
  const MaskShape shape{dims[0], dims[1], dims[2]};
  const uint64_t numel = static_cast<uint64_t>(dims[0]) * dims[1] * dims[2];
  const json& off = t["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
      !off[1].is_number_unsigned()) {
    return Bad(path, "data_offsets must be two non-negative integers");
  }
  const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
  if (begin > end || end > data_size || end - begin != numel) {
    return Bad(path, absl::StrCat("data_offsets [", begin, ", ", end, "] do not hold ", numel,
                                  " bytes inside the ", data_size, "-byte data section"));
  }
  std::vector<uint8_t> kept(numel);
  std::memcpy(kept.data(), data + begin, numel);

  auto align = PositiveInt(path, meta, "align", 32);
  if (!align.ok()) return align.status();
  auto mask = Mask::Create(shape, std::move(kept), *align);
  if (!mask.ok()) return Bad(path, mask.status().message());
  auto sink = PositiveInt(path, meta, "sink", 128);
  if (!sink.ok()) return sink.status();
  auto recent = PositiveInt(path, meta, "recent", 768);
  if (!recent.ok()) return recent.status();
  mask->sink = *sink;
  mask->recent = *recent;
  if (auto it = meta.find("target_sparsity"); it != meta.end()) {
    double v = 0;
    if (!absl::SimpleAtod(it->second, &v) || !(v >= 0.0 && v <= 1.0)) {
      return Bad(path,
                 absl::StrCat("metadata \"target_sparsity\" must be a number in [0, 1], got \"",
                              it->second, "\""));
    }
    mask->target_sparsity = v;
  }
  if (auto it = meta.find("model"); it != meta.end()) mask->model = it->second;
  return mask;
}

absl::StatusOr<Mask> LoadMask(const std::filesystem::path& path, const MaskShape& expected) {
  auto mask = ReadMask(path);
  if (!mask.ok()) return mask.status();
  const MaskShape& s = mask->shape();
  if (!(s == expected)) {
    return Bad(path, absl::StrCat("mask shape [", s.num_layers, ", ", s.num_kv_heads, ", ",
                                  s.head_dim, "] does not match the model's [", expected.num_layers,
                                  ", ", expected.num_kv_heads, ", ", expected.head_dim,
                                  "] (layers, kv heads, head_dim)"));
  }
  return mask;
}

absl::Status SaveMask(const Mask& mask, const std::filesystem::path& path) {
  const MaskShape& s = mask.shape();
  const uint64_t numel = static_cast<uint64_t>(s.num_layers) * s.num_kv_heads * s.head_dim;
  if (numel == 0 || mask.raw().size() != numel) {
    return absl::InvalidArgumentError(
        absl::StrCat("SaveMask ", path.string(), ": the mask is empty or inconsistent"));
  }
  json header;
  header["__metadata__"] = {{"format", kMaskFormat},
                            {"sink", std::to_string(mask.sink)},
                            {"recent", std::to_string(mask.recent)},
                            {"align", std::to_string(mask.align)},
                            {"target_sparsity", absl::StrCat(mask.target_sparsity)},
                            {"model", mask.model}};
  header[kMaskTensorName] = {{"dtype", "U8"},
                             {"shape", {s.num_layers, s.num_kv_heads, s.head_dim}},
                             {"data_offsets", {0, numel}}};
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data starts 8-byte aligned
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
  bytes += text;
  bytes.append(reinterpret_cast<const char*>(mask.raw().data()), numel);

  // Write a temporary file and rename, so a reader never sees a half-written mask.
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) {
      return absl::InternalError(absl::StrCat("SaveMask: cannot write ", tmp.string()));
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("SaveMask: cannot rename ", tmp.string(), " to ",
                                            path.string(), ": ", ec.message()));
  }
  return absl::OkStatus();
}

}  // namespace leank::cache
