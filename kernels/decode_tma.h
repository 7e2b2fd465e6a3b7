#pragma once
// Host side of the decode kernel's TMA loads (not public): the tensor maps of one layer's
// full and pruned storage, encoded through the driver entry point (no link-time libcuda
// dependency) and cached per (layer, storage pointers). The engine passes the same
// pointers every step and a benchmark rotates through a few copies, so each map is
// encoded once; the maps travel as a kernel parameter, so captured graphs hold them.

#include <vector>

#include "kernels/attention.h"
#include "kernels/internal.h"

namespace leank::kernels::detail {

class DecodeTmaCache {
 public:
  // The maps of `layer` over this layer's `full` and `pruned` storage; nullptr when the
  // TMA path is off (SetDecodeLoads), the model has more than kMaxTmaKvHeads kv heads,
  // the device is older than sm_90, or the driver refuses a map (then the cp.async path).
  const DecodeTmaMaps* Get(const DeviceMeta& meta, int layer, const bf16* full, const bf16* pruned);

 private:
  struct Entry {
    const bf16* full;
    const bf16* pruned;
    bool ok;
    DecodeTmaMaps maps;
  };
  std::vector<std::vector<Entry>> layers_;
  int supported_ = -1;  // -1: not yet checked
};

}  // namespace leank::kernels::detail
