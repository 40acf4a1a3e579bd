// Stochastic rounding from a counter-based hash, bit for bit as fused_optim/_layout.py defines it
// and the reference and Triton kernels compute it: each element draws 32-bit words
// w_j = mix32(element_lo ^ K_j), one mix per word, the keys K_j folded once per slice from the step,
// tensor, word and element_hi; each rounded stream takes a 16-bit slot of them (a float16
// parameter all of word 0): a bfloat16 parameter and its first state share word 0.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "dtypes.h"
#include "optimizer.h"
#include "simd.h"

namespace fused_optim {

constexpr uint32_t kMix1 = 0x7FEB352Du;
constexpr uint32_t kMix2 = 0x846CA68Bu;
constexpr uint32_t kGolden = 0x9E3779B9u;
constexpr int kRoundingWords = 3;  // fused_optim._layout.ROUNDING_WORDS

FUSED_OPTIM_INLINE uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= kMix1;
  x ^= x >> 15;
  x *= kMix2;
  x ^= x >> 16;
  return x;
}

// The word keys of one slice [offset, offset + n) of one tensor at one step; the slice must not
// cross a multiple of 2^32 elements (for_key_ranges splits it), so element_hi is folded in here.
struct RoundingKeys {
  uint32_t key[kRoundingWords];
  uint32_t offset_lo;

  RoundingKeys(uint32_t step_key, uint32_t tensor, int64_t offset) {
    const uint32_t offset_hi = static_cast<uint32_t>(static_cast<uint64_t>(offset) >> 32);
    for (int w = 0; w < kRoundingWords; ++w) {
      key[w] = mix32(mix32(mix32(mix32(step_key ^ kGolden) ^ tensor) ^ static_cast<uint32_t>(w)) ^ offset_hi);
    }
    offset_lo = static_cast<uint32_t>(offset);
  }

  // The random bits of stream `stream` (0: the parameter, 1 + k: state k) of the element whose
  // index has low 32 bits `element` (offset_lo + its place in the slice), for parameters of
  // storage type T (fused_optim._layout.rounding_slot). Streams of one word compute the same
  // mix32, which the compiler computes once.
  template <typename T>
  FUSED_OPTIM_INLINE uint32_t bits(int stream, uint32_t element) const {
    const int slot = stream + (std::is_same_v<T, half_t> && stream > 0 ? 1 : 0);
    return mix32(element ^ key[slot >> 1]) >> (16 * (slot & 1));
  }
};

// Calls fn(begin, n) over [offset, offset + n) cut at multiples of 2^32 elements.
template <typename F>
inline void for_key_ranges(int64_t offset, int64_t n, F&& fn) {
  constexpr int64_t kSpan = int64_t(1) << 32;
  int64_t done = 0;
  while (done < n) {
    const int64_t at = offset + done;
    const int64_t take = std::min(n - done, kSpan - (at & (kSpan - 1)));
    fn(done, take);
    done += take;
  }
}

FUSED_OPTIM_INLINE uint32_t float_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

FUSED_OPTIM_INLINE float bits_float(uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// Rounds x to the storage type up or down, with probability proportional to its distance from
// each neighbour: the dropped low bits plus uniform random bits carry into the kept ones.
template <typename T>
FUSED_OPTIM_INLINE T store_stochastic(float x, uint32_t r);

// bfloat16 from the low 16 bits of r, as a float32 bit pattern (as bf16_rounded_bits).
FUSED_OPTIM_INLINE uint32_t bf16_stochastic_bits(float x, uint32_t r) {
  const uint32_t rounded = (float_bits(x) + (r & 0xFFFFu)) & 0xFFFF0000u;
  const uint32_t nan = 0u - static_cast<uint32_t>(x != x);
  return (rounded & ~nan) | (0x7FC00000u & nan);
}

// bf16_stochastic_bits(x, r) >> 16, written out (as store_as<bf16_bits>)
template <>
FUSED_OPTIM_INLINE bf16_bits store_stochastic<bf16_bits>(float x, uint32_t r) {
  const uint32_t rounded = (float_bits(x) + (r & 0xFFFFu)) >> 16;
  const uint32_t nan = 0u - static_cast<uint32_t>(x != x);
  return static_cast<bf16_bits>((rounded & ~nan) | (0x7FC0u & nan));
}

// float16: normal magnitudes keep 10 of float32's 23 mantissa bits; below 2^-14 the float16 grid is
// uniform (2^-24 apart), rounded as floor(|x| * 2^24 + u) with u from 24 random bits.
template <>
FUSED_OPTIM_INLINE half_t store_stochastic<half_t>(float x, uint32_t r) {
  const float normal = bits_float((float_bits(x) + (r & 0x1FFFu)) & ~0x1FFFu);
  const float scaled = std::fabs(x) * 16777216.0f;
  const float whole = std::floor(scaled);
  const float u = static_cast<float>(r >> 8) * (1.0f / 16777216.0f);
  const float up = static_cast<float>(u < scaled - whole);
  const uint32_t tiny = float_bits((whole + up) * (1.0f / 16777216.0f)) | (float_bits(x) & 0x80000000u);
  // selects on bit masks, so the loops stay branch-free: x itself for NaN, else normal or tiny
  const uint32_t is_normal = 0u - static_cast<uint32_t>(std::fabs(x) >= 6.103515625e-05f);
  const uint32_t is_nan = 0u - static_cast<uint32_t>(x != x);
  const uint32_t rounded = (float_bits(normal) & is_normal) | (tiny & ~is_normal);
  return static_cast<half_t>(bits_float((float_bits(x) & is_nan) | (rounded & ~is_nan)));
}

}  // namespace fused_optim
