// Shared by the optimizers' element loops (adam.cpp, sgd.cpp, ...): storage and compute types, the
// low-precision options (master weights, bfloat16 state, stochastic rounding) as compile-time
// policies, and the macro that compiles one loop variant per SIMD target (simd.h).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "dtypes.h"
#include "optimizer.h"
#include "rounding.h"
#include "simd.h"

namespace fused_optim {

template <typename T>
using compute_t = typename ComputeType<T>::type;
// Default state of 16-bit parameters is float32; float and double parameters keep their own dtype.
template <typename T>
using state_t = compute_t<T>;

// The MASTER flag of every optimizer (fused_optim._layout.MASTER_KINDS): how a 16-bit parameter
// keeps what rounding to nearest would lose.
enum MasterKind { kMasterNone = 0, kMasterFp32 = 1, kMasterKahan = 2, kMasterStochastic = 3 };

template <int M>
using master_c = std::integral_constant<int, M>;

// Calls fn(T*, S*, master_c<M>) (null pointers of the parameter's storage type and the moment
// state's, and the master kind) for the combinations the frontend allows: bfloat16 state for
// float32 and 16-bit parameters, master weights for 16-bit parameters only.
template <typename F>
inline void dispatch_low_precision(c10::ScalarType dtype, bool state_bf16, int64_t master, const char* what, F&& fn) {
  const bool wide = dtype == c10::ScalarType::Float || dtype == c10::ScalarType::Double;
  TORCH_CHECK(master >= kMasterNone && master <= kMasterStochastic && !(wide && master != kMasterNone) &&
                  !(dtype == c10::ScalarType::Double && state_bf16),
              what, ": master weights take 16-bit parameters and bfloat16 state no float64 ones, got ", dtype);
  auto with_state = [&](auto* tag, auto* state_tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using S = std::remove_pointer_t<decltype(state_tag)>;
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      fn(static_cast<T*>(nullptr), static_cast<S*>(nullptr), master_c<kMasterNone>{});
    } else {
      switch (master) {
        case kMasterFp32:
          fn(static_cast<T*>(nullptr), static_cast<S*>(nullptr), master_c<kMasterFp32>{});
          break;
        case kMasterKahan:
          fn(static_cast<T*>(nullptr), static_cast<S*>(nullptr), master_c<kMasterKahan>{});
          break;
        case kMasterStochastic:
          fn(static_cast<T*>(nullptr), static_cast<S*>(nullptr), master_c<kMasterStochastic>{});
          break;
        default:
          fn(static_cast<T*>(nullptr), static_cast<S*>(nullptr), master_c<kMasterNone>{});
      }
    }
  };
  dispatch_storage(dtype, what, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if constexpr (std::is_same_v<T, double>) {
      with_state(tag, static_cast<double*>(nullptr));
    } else if (state_bf16) {
      with_state(tag, static_cast<bf16_bits*>(nullptr));
    } else {
      with_state(tag, static_cast<state_t<T>*>(nullptr));
    }
  });
}

// `on ? a : b` for a condition that is the same for every element, as a select on bits: GCC leaves a
// loop-invariant `?:` as control flow, which keeps the bigger loop bodies from being vectorized.
template <typename C>
FUSED_OPTIM_INLINE C choose(bool on, C a, C b) {
  using Bits = std::conditional_t<sizeof(C) == 8, uint64_t, uint32_t>;
  const Bits mask = Bits(0) - static_cast<Bits>(on);
  Bits x, y;
  std::memcpy(&x, &a, sizeof x);
  std::memcpy(&y, &b, sizeof y);
  const Bits r = (x & mask) | (y & ~mask);
  C out;
  std::memcpy(&out, &r, sizeof out);
  return out;
}

// The parameter's value as the update sees it: the float32 master copy, the 16-bit value plus its
// Kahan compensation, or the parameter itself.
template <typename T, int M>
FUSED_OPTIM_INLINE compute_t<T> load_param(const T* p, const void* master, int64_t i) {
  if constexpr (M == kMasterFp32) {
    return static_cast<const float*>(master)[i];
  } else if constexpr (M == kMasterKahan) {
    return load(p[i]) + load(static_cast<const T*>(master)[i]);
  } else {
    return load(p[i]);
  }
}

// A 16-bit parameter's update rounded for storage: stochastically with the parameter's random bits
// (stream 0) or to nearest (master kinds None and "stochastic").
template <typename T, int M>
FUSED_OPTIM_INLINE T round_param(float x, const RoundingKeys& keys, uint32_t element) {
  if constexpr (M == kMasterStochastic) {
    return store_stochastic<T>(x, keys.template bits<T>(0, element));
  } else {
    return store_as<T>(x);
  }
}

// Stores the updated value (of element i of the slice, `element` its index's low 32 bits): into
// the master copy and its rounding; as the rounding plus the rounding error in the compensation
// (exact: the two are within a factor 2, Sterbenz); or rounded by round_param.
template <typename T, int M>
FUSED_OPTIM_INLINE void store_param(T* p, void* master, int64_t i, compute_t<T> x,
                                    const RoundingKeys& keys, uint32_t element) {
  if constexpr (M == kMasterFp32) {
    static_cast<float*>(master)[i] = x;
    p[i] = store_as<T>(x);
  } else if constexpr (M == kMasterKahan) {
    const T rounded = store_as<T>(x);
    p[i] = rounded;
    static_cast<T*>(master)[i] = store_as<T>(x - load(rounded));
  } else if constexpr (M == kMasterStochastic) {
    p[i] = round_param<T, M>(x, keys, element);
  } else {
    p[i] = store_as<T>(x);
  }
}

// Moment state k of a parameter of storage type T, rounded for storage: bfloat16 state
// stochastically (stream 1 + k) under master_weights="stochastic", to nearest otherwise.
template <typename T, typename S, int M, typename C>
FUSED_OPTIM_INLINE S round_state(C x, int k, const RoundingKeys& keys, uint32_t element) {
  if constexpr (std::is_same_v<S, bf16_bits> && M == kMasterStochastic) {
    return store_stochastic<bf16_bits>(x, keys.template bits<T>(1 + k, element));
  } else {
    return store_as<S>(x);
  }
}

template <typename T, typename S, int M, typename C>
FUSED_OPTIM_INLINE void store_state(S* s, int64_t i, C x, int k, const RoundingKeys& keys, uint32_t element) {
  s[i] = round_state<T, S, M>(x, k, keys, element);
}

// Two consecutive bfloat16 values as one 32-bit word (little-endian: the even element in the low
// half), so a loop over words unpacks and packs them with one shift or mask each and every vector
// lane stays 32 bits wide.
struct Bf16Pair {
  float even, odd;
};

FUSED_OPTIM_INLINE Bf16Pair load_pair(const bf16_bits* s, int64_t j) {
  uint32_t w;
  std::memcpy(&w, s + 2 * j, sizeof w);
  return {bits_float(w << 16), bits_float(w & 0xFFFF0000u)};
}

// even, odd: bfloat16 values as float32 bit patterns (bf16_rounded_bits)
FUSED_OPTIM_INLINE void store_pair(bf16_bits* s, int64_t j, uint32_t even, uint32_t odd) {
  const uint32_t w = (even >> 16) | odd;
  std::memcpy(s + 2 * j, &w, sizeof w);
}

// round_param and round_state of bfloat16 values, as float32 bit patterns for store_pair
template <int M>
FUSED_OPTIM_INLINE uint32_t round_param_bits(float x, const RoundingKeys& keys, uint32_t element) {
  if constexpr (M == kMasterStochastic) {
    return bf16_stochastic_bits(x, keys.template bits<bf16_bits>(0, element));
  } else {
    return bf16_rounded_bits(x);
  }
}

template <int M>
FUSED_OPTIM_INLINE uint32_t round_state_bits(float x, int k, const RoundingKeys& keys, uint32_t element) {
  if constexpr (M == kMasterStochastic) {
    return bf16_stochastic_bits(x, keys.template bits<bf16_bits>(1 + k, element));
  } else {
    return bf16_rounded_bits(x);
  }
}

}  // namespace fused_optim
