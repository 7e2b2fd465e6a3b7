#include "engine/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace leank {
namespace {

using Json = nlohmann::json;

// The reference implementation refuses headers above 100 MB; so do we, before parsing.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
// Keeps numel * dtype size far from int64 overflow.
constexpr int64_t kMaxNumel = int64_t{1} << 56;

struct HeaderEntry {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
  int64_t numel = 1;
  uint64_t begin = 0;  // relative to the data section
  uint64_t end = 0;
};

struct ParsedHeader {
  std::vector<HeaderEntry> entries;  // sorted by begin
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // file offset of the data section
};

absl::Status FileError(const std::string& file, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": ", what));
}
absl::Status TensorError(const std::string& file, absl::string_view tensor,
                         absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(file, ": tensor '", tensor, "': ", what));
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

bool AsUint64(const Json& v, uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<uint64_t>();
    return true;
  }
  if (v.is_number_integer() && v.get<int64_t>() >= 0) {
    out = static_cast<uint64_t>(v.get<int64_t>());
    return true;
  }
  return false;
}

absl::StatusOr<HeaderEntry> ParseEntry(const std::string& file, const std::string& name,
                                       const Json& value, uint64_t data_size) {
  if (!value.is_object()) return TensorError(file, name, "header entry is not an object");
  HeaderEntry e;
  e.name = name;
  auto dtype = value.find("dtype");
  auto shape = value.find("shape");
  auto offsets = value.find("data_offsets");
  if (dtype == value.end() || !dtype->is_string()) return TensorError(file, name, "missing dtype");
  if (shape == value.end() || !shape->is_array()) return TensorError(file, name, "missing shape");
  if (offsets == value.end() || !offsets->is_array() || offsets->size() != 2) {
    return TensorError(file, name, "data_offsets must be a list of two integers");
  }
  e.dtype = dtype->get<std::string>();
  auto elem_size = SafetensorsDTypeSize(e.dtype);
  if (!elem_size.ok()) return TensorError(file, name, elem_size.status().message());
  for (const Json& d : *shape) {
    uint64_t dim;
    if (!AsUint64(d, dim) || dim > static_cast<uint64_t>(kMaxNumel)) {
      return TensorError(file, name, absl::StrCat("bad shape ", shape->dump()));
    }
    e.shape.push_back(static_cast<int64_t>(dim));
    if (dim != 0 && e.numel > kMaxNumel / static_cast<int64_t>(dim)) {
      return TensorError(file, name, absl::StrCat("shape ", shape->dump(), " is too large"));
    }
    e.numel *= static_cast<int64_t>(dim);
  }
  if (!AsUint64((*offsets)[0], e.begin) || !AsUint64((*offsets)[1], e.end) || e.end < e.begin) {
    return TensorError(file, name, absl::StrCat("bad data_offsets ", offsets->dump()));
  }
  if (e.end > data_size) {
    return TensorError(
        file, name,
        absl::StrCat("data_offsets ", offsets->dump(), " reach past the data section (", data_size,
                     " bytes); file truncated or header wrong"));
  }
  const uint64_t expected = static_cast<uint64_t>(e.numel) * static_cast<uint64_t>(*elem_size);
  if (e.end - e.begin != expected) {
    return TensorError(file, name,
                       absl::StrCat("data_offsets ", offsets->dump(), " span ", e.end - e.begin,
                                    " bytes but shape ", ShapeString(e.shape), " x ", e.dtype,
                                    " needs ", expected));
  }
  return e;
}

// Validates the header of a whole file held in memory (mapped or read).
absl::StatusOr<ParsedHeader> ParseHeader(const std::string& file, const uint8_t* bytes,
                                         uint64_t file_size) {
  if (file_size < 8) {
    return FileError(
        file, absl::StrCat("truncated: ", file_size, " bytes, less than the 8-byte header length"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];  // little-endian
  if (header_len > file_size - 8) {
    return FileError(file, absl::StrCat("header length ", header_len, " exceeds the file size ",
                                        file_size, " (truncated or not safetensors)"));
  }
  if (header_len > kMaxHeaderBytes) {
    return FileError(file, absl::StrCat("header length ", header_len, " exceeds 100 MB"));
  }
  const char* text = reinterpret_cast<const char*>(bytes + 8);
  Json header = Json::parse(text, text + header_len, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded() || !header.is_object()) {
    return FileError(file, "header is not a valid JSON object");
  }
  ParsedHeader parsed;
  parsed.data_start = 8 + header_len;
  const uint64_t data_size = file_size - parsed.data_start;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (value.is_null()) continue;
      if (!value.is_object()) return FileError(file, "__metadata__ is not an object");
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) {
          return FileError(file,
                           absl::StrCat("__metadata__ value of '", mkey, "' is not a string"));
        }
        parsed.metadata[mkey] = mvalue.get<std::string>();
      }
      continue;
    }
    auto entry = ParseEntry(file, key, value, data_size);
    if (!entry.ok()) return entry.status();
    parsed.entries.push_back(*std::move(entry));
  }
  std::sort(parsed.entries.begin(), parsed.entries.end(),
            [](const HeaderEntry& a, const HeaderEntry& b) {
              return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
            });
  // Empty tensors occupy no bytes and cannot overlap anything.
  const HeaderEntry* previous = nullptr;
  for (const HeaderEntry& e : parsed.entries) {
    if (e.begin == e.end) continue;
    if (previous != nullptr && e.begin < previous->end) {
      return TensorError(
          file, e.name,
          absl::StrCat("data [", e.begin, ", ", e.end, ") overlaps tensor '", previous->name, "' [",
                       previous->begin, ", ", previous->end, ")"));
    }
    previous = &e;
  }
  return parsed;
}

absl::Status ErrnoError(const std::string& file, absl::string_view what, int err) {
  std::string message = absl::StrCat(file, ": ", what, ": ", std::strerror(err));
  if (err == ENOENT) return absl::NotFoundError(message);
  if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(message);
  return absl::InternalError(message);
}

absl::StatusOr<std::string> ReadTextFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return ErrnoError(path.string(), "cannot open", errno ? errno : ENOENT);
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path.string(), ": read error"));
  return buffer.str();
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::vector<float> TensorView::ToFloat() const {
  std::vector<float> out(static_cast<size_t>(numel()));
  ConvertToFloat(dtype, data, numel(), out.data());
  return out;
}

absl::StatusOr<int> SafetensorsDTypeSize(std::string_view dtype) {
  static const std::map<std::string_view, int> kSizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};
  auto it = kSizes.find(dtype);
  if (it == kSizes.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown safetensors dtype '", std::string(dtype), "'"));
  }
  return it->second;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::filesystem::path& path) {
  const std::string file = path.string();
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(file, "cannot open", errno);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError(file, "cannot stat", err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return FileError(file, "not a regular file");
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {  // mmap of 0 bytes fails; report it as what it is
    ::close(fd);
    return ParseHeader(file, nullptr, size).status();
  }
  void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (mapping == MAP_FAILED) return ErrnoError(file, "cannot mmap", err);

  std::unique_ptr<SafetensorsFile> result(new SafetensorsFile());
  result->path_ = path;
  result->mapping_ = mapping;
  result->mapping_size_ = size;
  const auto* bytes = static_cast<const uint8_t*>(mapping);
  auto header = ParseHeader(file, bytes, size);
  if (!header.ok()) return header.status();
  for (HeaderEntry& e : header->entries) {
    auto dtype = ParseSafetensorsDType(e.dtype);
    if (!dtype.ok()) return TensorError(file, e.name, dtype.status().message());
    TensorView view;
    view.name = e.name;
    view.file = file;
    view.dtype = *dtype;
    view.shape = std::move(e.shape);
    view.data = bytes + header->data_start + e.begin;
    view.num_bytes = static_cast<int64_t>(e.end - e.begin);
    result->tensors_.emplace(e.name, std::move(view));
  }
  result->metadata_ = std::move(header->metadata);
  return result;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_size_);
}

absl::StatusOr<std::unique_ptr<WeightStore>> WeightStore::Open(
    const std::filesystem::path& model_dir) {
  std::unique_ptr<WeightStore> store(new WeightStore());
  store->dir_ = model_dir;
  const std::filesystem::path index_path = model_dir / "model.safetensors.index.json";
  const std::filesystem::path single_path = model_dir / "model.safetensors";
  std::error_code ec;
  if (std::filesystem::exists(index_path, ec)) {
    const std::string index_file = index_path.string();
    auto text = ReadTextFile(index_path);
    if (!text.ok()) return text.status();
    Json index = Json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (index.is_discarded() || !index.is_object()) {
      return FileError(index_file, "not a valid JSON object");
    }
    auto map_it = index.find("weight_map");
    if (map_it == index.end() || !map_it->is_object()) {
      return FileError(index_file, "missing object 'weight_map'");
    }
    std::map<std::string, std::vector<std::string>> tensors_by_shard;
    for (const auto& [tensor, shard] : map_it->items()) {
      if (!shard.is_string()) return TensorError(index_file, tensor, "shard name is not a string");
      const std::string name = shard.get<std::string>();
      // Shards live next to the index; a path could point anywhere.
      if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
        return TensorError(index_file, tensor, absl::StrCat("bad shard name '", name, "'"));
      }
      tensors_by_shard[name].push_back(tensor);
    }
    for (const auto& [shard, tensors] : tensors_by_shard) {
      auto file = SafetensorsFile::Open(model_dir / shard);
      if (!file.ok()) {
        return absl::Status(file.status().code(),
                            absl::StrCat(index_file, ": shard '", shard, "' (holding tensor '",
                                         tensors.front(), "'): ", file.status().message()));
      }
      for (const std::string& tensor : tensors) {
        if ((*file)->tensors().count(tensor) == 0) {
          return absl::NotFoundError(absl::StrCat((*file)->path().string(), ": tensor '", tensor,
                                                  "' listed in ", index_file, " is missing"));
        }
      }
      store->files_.push_back(*std::move(file));
    }
  } else if (std::filesystem::exists(single_path, ec)) {
    auto file = SafetensorsFile::Open(single_path);
    if (!file.ok()) return file.status();
    store->files_.push_back(*std::move(file));
  } else {
    return absl::NotFoundError(absl::StrCat(
        model_dir.string(), ": neither model.safetensors nor model.safetensors.index.json"));
  }
  for (const auto& file : store->files_) {
    for (const auto& [name, view] : file->tensors()) {
      auto [it, inserted] = store->index_.emplace(name, &view);
      if (!inserted) {
        return TensorError(file->path().string(), name,
                           absl::StrCat("also present in ", it->second->file));
      }
    }
  }
  return store;
}

bool WeightStore::Has(const std::string& name) const { return index_.count(name) != 0; }

absl::StatusOr<TensorView> WeightStore::Get(const std::string& name,
                                            const std::vector<int64_t>& shape) const {
  auto it = index_.find(name);
  if (it == index_.end()) {
    return absl::NotFoundError(
        absl::StrCat(dir_.string(), ": tensor '", name, "' not found in the model's safetensors"));
  }
  const TensorView& view = *it->second;
  if (view.shape != shape) {
    return TensorError(
        view.file, name,
        absl::StrCat("shape ", ShapeString(view.shape), ", expected ", ShapeString(shape)));
  }
  return view;
}

std::vector<std::string> WeightStore::Names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& [name, view] : index_) names.push_back(name);
  return names;
}

absl::StatusOr<RawSafetensors> ReadSafetensorsRaw(const std::filesystem::path& path) {
  auto content = ReadTextFile(path);
  if (!content.ok()) return content.status();
  const std::string file = path.string();
  auto header =
      ParseHeader(file, reinterpret_cast<const uint8_t*>(content->data()), content->size());
  if (!header.ok()) return header.status();
  RawSafetensors raw;
  raw.metadata = std::move(header->metadata);
  for (HeaderEntry& e : header->entries) {
    RawTensor t;
    t.name = std::move(e.name);
    t.dtype = std::move(e.dtype);
    t.shape = std::move(e.shape);
    t.bytes = content->substr(header->data_start + e.begin, e.end - e.begin);
    raw.tensors.push_back(std::move(t));
  }
  return raw;
}

absl::Status WriteSafetensors(const std::filesystem::path& path,
                              const std::vector<RawTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  const std::string file = path.string();
  Json header = Json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const RawTensor& t : tensors) {
    auto size = SafetensorsDTypeSize(t.dtype);
    if (!size.ok()) return TensorError(file, t.name, size.status().message());
    if (t.name == "__metadata__" || header.contains(t.name)) {
      return TensorError(file, t.name, "duplicate or reserved name");
    }
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) return TensorError(file, t.name, "negative dimension");
      numel *= d;
    }
    if (static_cast<uint64_t>(numel) * *size != t.bytes.size()) {
      return TensorError(
          file, t.name,
          absl::StrCat(t.bytes.size(), " bytes for shape ", ShapeString(t.shape), " x ", t.dtype));
    }
    header[t.name] = {{"dtype", t.dtype},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data section 8-byte aligned
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(text.size() >> (8 * i));

  const std::filesystem::path tmp = path.string() + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) return ErrnoError(tmp.string(), "cannot create", errno ? errno : EIO);
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const RawTensor& t : tensors) {
      out.write(t.bytes.data(), static_cast<std::streamsize>(t.bytes.size()));
    }
    out.close();
    if (!out) return absl::InternalError(absl::StrCat(tmp.string(), ": write failed"));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::filesystem::remove(tmp, ec);
    return absl::InternalError(absl::StrCat(file, ": rename failed"));
  }
  return absl::OkStatus();
}

}  // namespace leank
