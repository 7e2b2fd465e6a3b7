#pragma once
// PlanBuffer: the tables a host plan builds each step (block tables, work lists), laid
// out in one byte buffer and uploaded to one device buffer with a single asynchronous
// copy through pinned staging. The host never waits in steady state: it waits only when
// the previous upload is still reading the staging memory, or when a buffer must grow
// (then the stream is synchronised, since queued kernels may still read the old one).
// Shared by DecodeAttention and PrefillAttention. Host-only C++.

#include <cuda_runtime.h>

#include <cstddef>
#include <cstring>
#include <vector>

namespace leank::kernels {

class PlanBuffer {
 public:
  PlanBuffer() = default;
  ~PlanBuffer();
  PlanBuffer(const PlanBuffer&) = delete;
  PlanBuffer& operator=(const PlanBuffer&) = delete;

  // Starts a new plan (the device copy of the previous one stays valid until Upload).
  void Clear() { host_.clear(); }
  // Appends `n` elements at a 16-byte boundary; returns their byte offset.
  template <typename T>
  size_t Append(const T* data, size_t n) {
    const size_t off = (host_.size() + 15) & ~size_t{15};
    host_.resize(off + n * sizeof(T));
    if (n) std::memcpy(host_.data() + off, data, n * sizeof(T));
    return off;
  }
  size_t bytes() const { return host_.size(); }
  // Enqueues the copy of the appended bytes to the device on `stream`.
  void Upload(cudaStream_t stream);
  // Device copy (valid for kernels enqueued on the stream after Upload).
  const unsigned char* device() const { return static_cast<const unsigned char*>(device_); }

 private:
  std::vector<unsigned char> host_;
  unsigned char* pinned_ = nullptr;
  size_t pinned_capacity_ = 0;
  void* device_ = nullptr;
  size_t device_capacity_ = 0;
  cudaEvent_t copied_ = nullptr;  // recorded after each upload's copy
};

}  // namespace leank::kernels
