// Streaming (non-temporal) stores for outputs that cannot stay in the cache. A normal store
// first reads the line it writes (read-for-ownership); when the input and output of a pass
// together exceed the last-level cache that read is a third of the pass's memory traffic, and a
// streaming store skips it. Smaller outputs keep normal stores, so the next layer finds them in
// the cache. Results are bit-identical to the plain loops: the same multiply then add.
#pragma once

#include <cstdint>
#include <cstdio>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define FUSED_OPTIM_STREAM_STORES 1
#endif

namespace fused_optim {

// The last-level cache in bytes: sysfs's index3 (the size the kernel reports for this CPU; a
// virtual machine's sysconf can report the host's), else 32 MiB.
inline int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    int64_t size = 0;
    if (std::FILE* f = std::fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r")) {
      long value = 0;
      char unit = 0;
      if (std::fscanf(f, "%ld%c", &value, &unit) >= 1) {
        size = value * (unit == 'K' ? 1024 : unit == 'M' ? 1024 * 1024 : 1);
      }
      std::fclose(f);
    }
    return size > 0 ? size : int64_t(32) << 20;
  }();
  return bytes;
}

#ifdef FUSED_OPTIM_STREAM_STORES

// y[k] = x[k] * a[c] + b[c] with c = k % period (period 1: one scale for the whole span).
#define FUSED_OPTIM_STREAM_AFFINE(NAME, TARGET, VEC, WIDTH, ALIGN, LOAD, STORE, SET1, MUL, ADD)                  \
  __attribute__((target(TARGET))) inline void NAME(const float* x, float* y, int64_t n, const float* a,          \
                                                   const float* b, int64_t period) {                             \
    auto one = [&](int64_t k) {                                                                                   \
      const int64_t c = period == 1 ? 0 : k % period;                                                            \
      y[k] = x[k] * a[c] + b[c];                                                                                  \
    };                                                                                                            \
    int64_t k = 0;                                                                                                \
    for (; k < n && (reinterpret_cast<uintptr_t>(y + k) & (ALIGN - 1)) != 0; ++k) one(k);                        \
    for (; k + WIDTH <= n; k += WIDTH) {                                                                          \
      const int64_t c = period == 1 ? 0 : k % period; /* period % 16 == 0: a vector never wraps */               \
      const VEC va = period == 1 ? SET1(a[0]) : LOAD(a + c);                                                     \
      const VEC vb = period == 1 ? SET1(b[0]) : LOAD(b + c);                                                     \
      STORE(y + k, ADD(MUL(LOAD(x + k), va), vb));                                                                \
    }                                                                                                             \
    for (; k < n; ++k) one(k);                                                                                    \
  }

FUSED_OPTIM_STREAM_AFFINE(stream_affine_avx512, "avx512f", __m512, 16, 64, _mm512_loadu_ps, _mm512_stream_ps,
                          _mm512_set1_ps, _mm512_mul_ps, _mm512_add_ps)
FUSED_OPTIM_STREAM_AFFINE(stream_affine_avx, "avx", __m256, 8, 32, _mm256_loadu_ps, _mm256_stream_ps, _mm256_set1_ps,
                          _mm256_mul_ps, _mm256_add_ps)
#undef FUSED_OPTIM_STREAM_AFFINE

// One LayerNorm row: y[i] = ((x[i] - mean) * rstd) * w[i] + b[i] (w, b may be null), the
// operations of layer_norm.cpp's row loop in the same order.
#define FUSED_OPTIM_STREAM_ROW(NAME, TARGET, VEC, WIDTH, ALIGN, LOAD, STORE, SET1, SUB, MUL, ADD)              \
  __attribute__((target(TARGET))) inline void NAME(const float* x, float* y, int64_t n, float mean, float rstd, \
                                                   const float* w, const float* b) {                          \
    auto one = [&](int64_t i) {                                                                                 \
      float v = (x[i] - mean) * rstd;                                                                           \
      if (w != nullptr) v = v * w[i];                                                                           \
      if (b != nullptr) v = v + b[i];                                                                           \
      y[i] = v;                                                                                                 \
    };                                                                                                          \
    int64_t i = 0;                                                                                              \
    for (; i < n && (reinterpret_cast<uintptr_t>(y + i) & (ALIGN - 1)) != 0; ++i) one(i);                      \
    const VEC vm = SET1(mean);                                                                                  \
    const VEC vr = SET1(rstd);                                                                                  \
    for (; i + WIDTH <= n; i += WIDTH) {                                                                        \
      VEC v = MUL(SUB(LOAD(x + i), vm), vr);                                                                    \
      if (w != nullptr) v = MUL(v, LOAD(w + i));                                                                \
      if (b != nullptr) v = ADD(v, LOAD(b + i));                                                                \
      STORE(y + i, v);                                                                                          \
    }                                                                                                           \
    for (; i < n; ++i) one(i);                                                                                  \
  }

FUSED_OPTIM_STREAM_ROW(stream_layer_norm_row_avx512, "avx512f", __m512, 16, 64, _mm512_loadu_ps, _mm512_stream_ps,
                       _mm512_set1_ps, _mm512_sub_ps, _mm512_mul_ps, _mm512_add_ps)
FUSED_OPTIM_STREAM_ROW(stream_layer_norm_row_avx, "avx", __m256, 8, 32, _mm256_loadu_ps, _mm256_stream_ps,
                       _mm256_set1_ps, _mm256_sub_ps, _mm256_mul_ps, _mm256_add_ps)
#undef FUSED_OPTIM_STREAM_ROW

// BatchNorm's dx: out[j] = (g[j] * k1 + (v[j] - m) * k2) + k3 with batch statistics, else
// g[j] * k1, the coefficients of channel j % period (period 1: one channel), in batch_norm.cpp's
// order of operations.
#define FUSED_OPTIM_STREAM_DX(NAME, TARGET, VEC, WIDTH, ALIGN, LOAD, STORE, SET1, SUB, MUL, ADD)                   \
  __attribute__((target(TARGET))) inline void NAME(const float* g, const float* v, float* out, int64_t n,          \
                                                   const float* m, const float* k1, const float* k2,               \
                                                   const float* k3, int64_t period, bool batch_stats) {            \
    auto one = [&](int64_t j) {                                                                                     \
      const int64_t c = period == 1 ? 0 : j % period;                                                              \
      out[j] = batch_stats ? g[j] * k1[c] + (v[j] - m[c]) * k2[c] + k3[c] : g[j] * k1[c];                          \
    };                                                                                                              \
    int64_t j = 0;                                                                                                  \
    for (; j < n && (reinterpret_cast<uintptr_t>(out + j) & (ALIGN - 1)) != 0; ++j) one(j);                        \
    for (; j + WIDTH <= n; j += WIDTH) {                                                                            \
      const int64_t c = period == 1 ? 0 : j % period;                                                              \
      const VEC vk1 = period == 1 ? SET1(k1[0]) : LOAD(k1 + c);                                                    \
      VEC r = MUL(LOAD(g + j), vk1);                                                                                \
      if (batch_stats) {                                                                                            \
        const VEC vm = period == 1 ? SET1(m[0]) : LOAD(m + c);                                                     \
        const VEC vk2 = period == 1 ? SET1(k2[0]) : LOAD(k2 + c);                                                  \
        const VEC vk3 = period == 1 ? SET1(k3[0]) : LOAD(k3 + c);                                                  \
        r = ADD(ADD(r, MUL(SUB(LOAD(v + j), vm), vk2)), vk3);                                                      \
      }                                                                                                             \
      STORE(out + j, r);                                                                                            \
    }                                                                                                               \
    for (; j < n; ++j) one(j);                                                                                      \
  }

FUSED_OPTIM_STREAM_DX(stream_batch_norm_dx_avx512, "avx512f", __m512, 16, 64, _mm512_loadu_ps, _mm512_stream_ps,
                      _mm512_set1_ps, _mm512_sub_ps, _mm512_mul_ps, _mm512_add_ps)
FUSED_OPTIM_STREAM_DX(stream_batch_norm_dx_avx, "avx", __m256, 8, 32, _mm256_loadu_ps, _mm256_stream_ps,
                      _mm256_set1_ps, _mm256_sub_ps, _mm256_mul_ps, _mm256_add_ps)
#undef FUSED_OPTIM_STREAM_DX

#endif

// Which streaming variant this CPU runs: 2 AVX-512, 1 AVX, 0 none.
inline int stream_level() {
#ifdef FUSED_OPTIM_STREAM_STORES
  static const int level = __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx") ? 1 : 0;
  return level;
#else
  return 0;
#endif
}

// Whether a pass that reads `read_bytes` and writes `written_bytes` should stream its output.
inline bool should_stream(int64_t read_bytes, int64_t written_bytes) {
  return stream_level() > 0 && read_bytes + written_bytes > last_level_cache_bytes();
}

// y[k] = x[k] * a[k % period] + b[k % period] for k < n with streaming stores; the caller checked
// should_stream and calls stream_fence() once its spans are written. period is 1 (one scale) or a
// multiple of 16 with y 64-byte aligned at every period boundary.
inline void stream_affine(const float* x, float* y, int64_t n, const float* a, const float* b, int64_t period) {
#ifdef FUSED_OPTIM_STREAM_STORES
  if (stream_level() == 2) {
    stream_affine_avx512(x, y, n, a, b, period);
  } else {
    stream_affine_avx(x, y, n, a, b, period);
  }
#endif
}

// One LayerNorm row with streaming stores; the caller checked should_stream and calls
// stream_fence() once its rows are written.
inline void stream_layer_norm_row(const float* x, float* y, int64_t n, float mean, float rstd, const float* w,
                                  const float* b) {
#ifdef FUSED_OPTIM_STREAM_STORES
  if (stream_level() == 2) {
    stream_layer_norm_row_avx512(x, y, n, mean, rstd, w, b);
  } else {
    stream_layer_norm_row_avx(x, y, n, mean, rstd, w, b);
  }
#endif
}

// BatchNorm's dx with streaming stores (see stream_batch_norm_dx_avx512); period 1 or a multiple
// of 16 with `out` 64-byte aligned at every period boundary.
inline void stream_batch_norm_dx(const float* g, const float* v, float* out, int64_t n, const float* m,
                                 const float* k1, const float* k2, const float* k3, int64_t period, bool batch_stats) {
#ifdef FUSED_OPTIM_STREAM_STORES
  if (stream_level() == 2) {
    stream_batch_norm_dx_avx512(g, v, out, n, m, k1, k2, k3, period, batch_stats);
  } else {
    stream_batch_norm_dx_avx(g, v, out, n, m, k1, k2, k3, period, batch_stats);
  }
#endif
}

inline void stream_fence() {
#ifdef FUSED_OPTIM_STREAM_STORES
  _mm_sfence();
#endif
}

}  // namespace fused_optim
