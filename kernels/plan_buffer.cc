#include "kernels/plan_buffer.h"

#include <algorithm>

#include "kernels/cuda_check.h"

namespace leank::kernels {

PlanBuffer::~PlanBuffer() {
  if (copied_) {
    cudaEventSynchronize(copied_);
    cudaEventDestroy(copied_);
  }
  cudaFreeHost(pinned_);
  cudaFree(device_);
}

void PlanBuffer::Upload(cudaStream_t stream) {
  const size_t n = std::max<size_t>(host_.size(), 16);
  if (!copied_) LEANK_CUDA_CHECK(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming));
  // The previous copy may still read the staging memory (normally long done).
  LEANK_CUDA_CHECK(cudaEventSynchronize(copied_));
  if (n > pinned_capacity_) {
    cudaFreeHost(pinned_);
    pinned_capacity_ = n * 2;
    LEANK_CUDA_CHECK(cudaMallocHost(&pinned_, pinned_capacity_));
  }
  if (n > device_capacity_) {
    LEANK_CUDA_CHECK(cudaStreamSynchronize(stream));  // queued kernels may read the old one
    cudaFree(device_);
    device_capacity_ = n * 2;
    LEANK_CUDA_CHECK(cudaMalloc(&device_, device_capacity_));
  }
  if (!host_.empty()) std::memcpy(pinned_, host_.data(), host_.size());
  LEANK_CUDA_CHECK(cudaMemcpyAsync(device_, pinned_, host_.size(), cudaMemcpyHostToDevice, stream));
  LEANK_CUDA_CHECK(cudaEventRecord(copied_, stream));
}

}  // namespace leank::kernels
