// Storage types the kernels read and write, and their conversion to the compute type.
// float16 is GCC's _Float16 (F16C conversions in the AVX2 / AVX-512 clones); bfloat16 is carried
// as its raw bits so the conversions are plain integer ops that vectorize everywhere.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <cstring>

namespace fused_optim {

using bf16_bits = uint16_t;
using half_t = _Float16;

// float for every storage type but double: a kernel computes in fp32 and casts once at the store.
template <typename T>
struct ComputeType {
  using type = float;
};
template <>
struct ComputeType<double> {
  using type = double;
};

inline float load(float x) { return x; }
inline double load(double x) { return x; }
inline float load(half_t x) { return static_cast<float>(x); }
inline float load(bf16_bits x) {
  const uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

template <typename T>
inline T store_as(float x);
template <>
inline float store_as<float>(float x) { return x; }
template <>
inline half_t store_as<half_t>(float x) { return static_cast<half_t>(x); }
// x rounded to bfloat16 to nearest even, NaN to the canonical quiet NaN (the same bits as
// c10::BFloat16), as a float32 bit pattern: the bfloat16 in the high half, the low half zero.
inline uint32_t bf16_rounded_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) & 0xFFFF0000u;
  const uint32_t nan = 0u - static_cast<uint32_t>(x != x);  // all ones for NaN: a select without a branch
  return (rounded & ~nan) | (0x7FC00000u & nan);
}
// Round to nearest even, NaN to the canonical quiet NaN: bf16_rounded_bits(x) >> 16, written out,
// as GCC vectorizes it better than the shifted form in loops that store 16-bit lanes.
template <>
inline bf16_bits store_as<bf16_bits>(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t nan = 0u - static_cast<uint32_t>(x != x);
  return static_cast<bf16_bits>((rounded & ~nan) | (0x7FC0u & nan));
}
template <typename T>
inline T store_as(double x);
template <>
inline double store_as<double>(double x) { return x; }

// Calls fn with a null pointer of the storage type that holds tensors of `type`.
template <typename F>
inline void dispatch_storage(c10::ScalarType type, const char* what, F&& fn) {
  switch (type) {
    case c10::ScalarType::Float:
      fn(static_cast<float*>(nullptr));
      break;
    case c10::ScalarType::Double:
      fn(static_cast<double*>(nullptr));
      break;
    case c10::ScalarType::BFloat16:
      fn(static_cast<bf16_bits*>(nullptr));
      break;
    case c10::ScalarType::Half:
      fn(static_cast<half_t*>(nullptr));
      break;
    default:
      TORCH_CHECK(false, what, ": unsupported dtype ", type);
  }
}

// The dtype of optimizer state for parameters of real dtype `param`: float32 for the 16-bit types.
inline c10::ScalarType state_dtype_for(c10::ScalarType param) {
  return (param == c10::ScalarType::BFloat16 || param == c10::ScalarType::Half) ? c10::ScalarType::Float : param;
}

}  // namespace fused_optim
