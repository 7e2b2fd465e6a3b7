// Compaction: full recent blocks -> pruned blocks (cache/README.md "A step"), every job
// and layer of a step in one launch. CTA = (job, layer); K rows are gathered by the
// head's kept channels, V tiles of live heads are copied with 16-byte vectors.

#include <cuda_runtime.h>

#include "kernels/internal.h"

namespace leank::kernels::detail {
namespace {

__global__ void __launch_bounds__(256) CompactKernel(const CompactParams p) {
  const CompactJobRaw job = p.jobs[blockIdx.x];
  const int layer = p.layer_begin + blockIdx.y;
  const int H = p.H, B = p.B, D = p.D;
  const int64_t full_block_elems = int64_t(2) * H * B * D;
  const __nv_bfloat16* src =
      p.full + (int64_t(layer) * p.num_full_blocks + job.src_full_block) * full_block_elems;
  __nv_bfloat16* dst = p.pruned + p.layer_base[blockIdx.y] +
                       int64_t(job.dst_pruned_block) * p.block_elems[blockIdx.y];
  for (int h = 0; h < H; ++h) {
    const int kept = p.kept[layer * H + h];
    if (kept == 0) continue;
    const uint8_t* chan = p.channels + (size_t(layer) * H + h) * D;
    const __nv_bfloat16* k = src + int64_t(h) * B * D;
    __nv_bfloat16* kd = dst + p.k_off[layer * H + h];
    for (int i = threadIdx.x; i < B * kept; i += blockDim.x) {
      const int slot = i / kept, j = i - slot * kept;
      kd[i] = k[slot * D + chan[j]];
    }
    const uint4* v = reinterpret_cast<const uint4*>(src + int64_t(H + h) * B * D);
    uint4* vd = reinterpret_cast<uint4*>(dst + p.v_off[layer * H + h]);
    for (int i = threadIdx.x; i < B * D / 8; i += blockDim.x) vd[i] = v[i];
  }
}

}  // namespace

void LaunchCompactKernel(const CompactParams& p, int num_jobs, int num_layers,
                         cudaStream_t stream) {
  CompactKernel<<<dim3(num_jobs, num_layers), 256, 0, stream>>>(p);
  LEANK_CUDA_CHECK(cudaGetLastError());
}

}  // namespace leank::kernels::detail
