#pragma once
// Helpers shared by the cache tests: random aligned masks and random floats.

#include <cstdint>
#include <random>
#include <vector>

#include "cache/mask.h"
#include "gtest/gtest.h"

namespace leank::cache::testing {

// A random mask whose kept counts are multiples of `align`; head 0 of layer 0 keeps every
// channel and head 1 of layer 0 keeps none (when there are two heads), so both edge
// cases are always present.
inline Mask RandomMask(MaskShape shape, int align, uint32_t seed) {
  std::mt19937 rng(seed);
  const int units = shape.head_dim / align;
  std::vector<uint8_t> kept(static_cast<size_t>(shape.num_layers) * shape.num_kv_heads *
                            shape.head_dim);
  for (int l = 0; l < shape.num_layers; ++l) {
    for (int h = 0; h < shape.num_kv_heads; ++h) {
      int count = std::uniform_int_distribution<int>(0, units)(rng) * align;
      if (l == 0 && h == 0) count = shape.head_dim;
      if (l == 0 && h == 1) count = 0;
      std::vector<int> channels(shape.head_dim);
      for (int c = 0; c < shape.head_dim; ++c) channels[c] = c;
      std::shuffle(channels.begin(), channels.end(), rng);
      uint8_t* row =
          kept.data() + (static_cast<size_t>(l) * shape.num_kv_heads + h) * shape.head_dim;
      for (int c = 0; c < count; ++c) row[channels[c]] = 1;
    }
  }
  auto mask = Mask::Create(shape, std::move(kept), align);
  EXPECT_TRUE(mask.ok()) << mask.status();
  return *mask;
}

inline std::vector<float> RandomFloats(size_t n, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

}  // namespace leank::cache::testing
