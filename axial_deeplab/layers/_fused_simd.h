/* What the compiled attention kernels share (_fused_eval.c, _fused_train.c): 8-float AVX2 vectors,
 * the softmax's exponential, an 8 x 8 transpose and the run-time CPU check. Each kernel is one
 * translation unit that includes this header; nothing here is exported. */
#ifndef AXIAL_FUSED_SIMD_H
#define AXIAL_FUSED_SIMD_H

#include <stdint.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FUSED_X86 1
#include <immintrin.h>

typedef float v8f __attribute__((vector_size(32), aligned(32)));
typedef int32_t v8i __attribute__((vector_size(32), aligned(32)));

#define TARGET __attribute__((target("avx2,fma")))

/* exp(x) for x <= 0 (a softmax's shifted logits), lanes below -87 flushed towards zero, NaN kept
 * (maxps returns its second operand when either is NaN: a NaN logit makes its query's outputs
 * NaN, as in PyTorch's softmax, instead of a weight of zero). A degree-6 polynomial after range
 * reduction, relative error about 2e-7. */
static inline TARGET v8f exp8(v8f x)
{
    x = (v8f)_mm256_max_ps(_mm256_set1_ps(-87.0f), (__m256)x);
    const v8f magic = (v8f)_mm256_set1_ps(12582912.0f); /* 1.5 * 2^23: adding it rounds */
    v8f t = x * 1.44269504088896341f + magic;
    v8f n = t - magic;
    v8f r = x - n * 0.693145751953125f - n * 1.428606765330187045e-06f;
    v8f p = r * (1.0f / 720) + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    v8i bits = ((v8i)t - 0x4B400000 + 127) << 23; /* 2^n */
    return p * (v8f)bits;
}

/* t[j][i] = r[i][j] for an 8 x 8 block. */
static inline TARGET void transpose8(const __m256 r[8], __m256 t[8])
{
    __m256 a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
        a[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        a[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        b[i] = _mm256_shuffle_ps(a[i], a[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        b[i + 1] = _mm256_shuffle_ps(a[i], a[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        b[i + 2] = _mm256_shuffle_ps(a[i + 1], a[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        b[i + 3] = _mm256_shuffle_ps(a[i + 1], a[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int j = 0; j < 4; j++) {
        t[j] = _mm256_permute2f128_ps(b[j], b[j + 4], 0x20);
        t[j + 4] = _mm256_permute2f128_ps(b[j], b[j + 4], 0x31);
    }
}

static inline int cpu_ok(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static inline int cpu_ok(void) { return 0; }
#endif

#endif
