// Mask file reading/writing on top of engine/model's safetensors reader and writer
// (which validate the header, offsets and sizes); this file adds what a mask must be:
// the format tag, one uint8 tensor [layers, kv_heads, head_dim], and its metadata.

#include <map>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "cache/mask.h"
#include "engine/model/safetensors.h"

namespace leank::cache {
namespace {

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
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat("mask file ", path.string(), ": cannot open"));
  }
  // The reader's messages already start with the path.
  auto raw = ReadSafetensorsRaw(path);
  if (!raw.ok())
    return absl::InvalidArgumentError(absl::StrCat("mask file ", raw.status().message()));
  const std::map<std::string, std::string>& meta = raw->metadata;
  auto format = meta.find("format");
  if (format == meta.end()) {
    return Bad(path, absl::StrCat("metadata has no \"format\" (expected \"", kMaskFormat, "\")"));
  }
  if (format->second != kMaskFormat) {
    return Bad(path,
               absl::StrCat("format is \"", format->second, "\", expected \"", kMaskFormat, "\""));
  }

  // The tensor.
  const RawTensor* t = nullptr;
  for (const RawTensor& candidate : raw->tensors) {
    if (candidate.name == kMaskTensorName) t = &candidate;
  }
  if (t == nullptr) return Bad(path, absl::StrCat("no tensor \"", kMaskTensorName, "\""));
  if (t->dtype != "U8" && t->dtype != "BOOL") {
    return Bad(path, absl::StrCat("tensor \"", kMaskTensorName, "\" has dtype \"", t->dtype,
                                  "\", expected \"U8\""));
  }
  auto shape_text = [&] {
    std::string text = "[";
    for (size_t i = 0; i < t->shape.size(); ++i) absl::StrAppend(&text, i ? "," : "", t->shape[i]);
    return text + "]";
  };
  if (t->shape.size() != 3) {
    return Bad(path, absl::StrCat("tensor \"", kMaskTensorName, "\" has shape ", shape_text(),
                                  ", expected [layers, kv_heads, head_dim]"));
  }
  int dims[3];
  for (int i = 0; i < 3; ++i) {
    if (t->shape[i] <= 0 || t->shape[i] > (1 << 20)) {
      return Bad(path, absl::StrCat("tensor \"", kMaskTensorName, "\" has shape ", shape_text(),
                                    ": dimensions must be positive"));
    }
    dims[i] = static_cast<int>(t->shape[i]);
  }
  const MaskShape shape{dims[0], dims[1], dims[2]};
  // The reader checked that the bytes are exactly numel x 1 byte.
  std::vector<uint8_t> kept(t->bytes.begin(), t->bytes.end());

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
  RawTensor t;
  t.name = kMaskTensorName;
  t.dtype = "U8";
  t.shape = {s.num_layers, s.num_kv_heads, s.head_dim};
  t.bytes.assign(mask.raw().begin(), mask.raw().end());
  // The writer goes through a temporary file renamed into place: no half-written masks.
  return WriteSafetensors(path, {t},
                          {{"format", kMaskFormat},
                           {"sink", std::to_string(mask.sink)},
                           {"recent", std::to_string(mask.recent)},
                           {"align", std::to_string(mask.align)},
                           {"target_sparsity", absl::StrCat(mask.target_sparsity)},
                           {"model", mask.model}});
}

}  // namespace leank::cache
