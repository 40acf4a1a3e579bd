// Runtime ISA dispatch for the SIMD loops: GCC compiles a function marked FUSED_OPTIM_SIMD_CLONES
// three times (AVX-512, AVX2+FMA+F16C, baseline x86-64) and picks one when the library loads, so
// an ahead-of-time build runs on any x86-64 and is still vectorized for the CPU it runs on.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FUSED_OPTIM_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FUSED_OPTIM_SIMD_CLONES
#endif

#define FUSED_OPTIM_INLINE inline __attribute__((always_inline))

// Starts a memory stream ahead of use: the first kilobyte of a tensor about to be walked. Short
// tensors (a 4096-element bias, say) end before the hardware prefetchers have ramped up on their
// streams, and restarting them costs about as much as moving the tensor; so the loops over many
// tensors request the next tensor's head while they work on the current one. Addresses past the
// end of a small tensor are harmless: a prefetch never faults.
inline void prefetch_head(const void* stream, bool for_write) {
  constexpr int kLines = 16;
  for (int line = 0; line < kLines; ++line) {
    if (for_write) {
      __builtin_prefetch(static_cast<const char*>(stream) + 64 * line, 1);
    } else {
      __builtin_prefetch(static_cast<const char*>(stream) + 64 * line, 0);
    }
  }
}
