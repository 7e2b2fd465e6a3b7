#pragma once
// Memory-mapped safetensors files, single or sharded (model.safetensors.index.json).
// Every header is validated before use: offsets inside the file, sizes equal to
// shape x dtype, no overlaps. Errors name the file and the tensor.

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/dtype.h"

namespace leank {

struct TensorView {
  std::string name;
  std::string file;  // file it lives in, for messages
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // points into the mapping; valid while the file is open
  int64_t num_bytes = 0;

  int64_t numel() const;
  std::vector<float> ToFloat() const;  // converts to fp32
};

class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  std::filesystem::path path_;
  void* mapping_ = nullptr;
  size_t mapping_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a model folder: model.safetensors, or the shards listed by
// model.safetensors.index.json.
class WeightStore {
 public:
  static absl::StatusOr<std::unique_ptr<WeightStore>> Open(const std::filesystem::path& model_dir);

  bool Has(const std::string& name) const;
  // The tensor, checked to have exactly `shape`. NotFound / InvalidArgument naming
  // the tensor and its file otherwise.
  absl::StatusOr<TensorView> Get(const std::string& name, const std::vector<int64_t>& shape) const;
  std::vector<std::string> Names() const;
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;  // for messages
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

// A tensor of any safetensors dtype ("U8", "BF16", ...) held in memory: for small
// files that are not model weights (LeanK masks are uint8) and for writing files.
struct RawTensor {
  std::string name;
  std::string dtype;  // safetensors header name
  std::vector<int64_t> shape;
  std::string bytes;  // numel * dtype size bytes, little-endian
};

struct RawSafetensors {
  std::vector<RawTensor> tensors;  // in file order (ascending data offset)
  std::map<std::string, std::string> metadata;
};

// Bytes per element of a safetensors dtype name (BOOL, U8, I8, F8_E4M3, F8_E5M2, I16,
// U16, F16, BF16, I32, U32, F32, F64, I64, U64); InvalidArgument when unknown.
absl::StatusOr<int> SafetensorsDTypeSize(std::string_view dtype);

// Reads and validates a whole file into memory, any dtype accepted. Same checks as
// SafetensorsFile::Open.
absl::StatusOr<RawSafetensors> ReadSafetensorsRaw(const std::filesystem::path& path);

// Writes a safetensors file (header padded to 8 bytes, tensors in the given order),
// through a temporary file renamed into place. Checks bytes == numel * dtype size.
absl::Status WriteSafetensors(const std::filesystem::path& path,
                              const std::vector<RawTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

}  // namespace leank
