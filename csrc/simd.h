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
