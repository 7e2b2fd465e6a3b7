#pragma once
// Owning device/pinned-host buffers and CUDA error checks for the CUDA backend.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

#include "kernels/cuda_check.h"

namespace leank::cuda {

// Bytes of device memory; moves only. Allocate() reports failure as a Status (the
// preflight should have caught it, but another process may have taken memory since).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(DeviceBuffer&& o) noexcept { *this = std::move(o); }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    std::swap(bytes_, o.bytes_);
    return *this;
  }
  ~DeviceBuffer() { cudaFree(ptr_); }

  absl::Status Allocate(size_t bytes, const char* what) {
    cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    if (bytes == 0) return absl::OkStatus();
    cudaError_t e = cudaMalloc(&ptr_, bytes);
    if (e != cudaSuccess) {
      ptr_ = nullptr;
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrCat("cudaMalloc of ", bytes, " bytes for ", what,
                                                       " failed: ", cudaGetErrorString(e)));
    }
    bytes_ = bytes;
    return absl::OkStatus();
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() { cudaFreeHost(ptr_); }
  // Grows (never shrinks); contents are lost.
  void Reserve(size_t bytes) {
    if (bytes <= bytes_) return;
    cudaFreeHost(ptr_);
    bytes_ = bytes * 3 / 2 + 4096;
    LEANK_CUDA_CHECK(cudaMallocHost(&ptr_, bytes_));
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace leank::cuda
