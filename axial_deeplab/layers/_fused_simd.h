/* What the compiled attention kernels share (_fused_eval.c, _fused_train.c): 8-float AVX2 vectors,
 * the softmax's exponential, an 8 x 8 transpose, the softmax and value sums of a pair of queries,
 * and the run-time CPU check. Each kernel is one translation unit that includes this header;
 * nothing here is exported. */
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

/* Softmax weights of one query over its keys [lo, hi), in place; row[p0, lo) and row[hi, p1)
 * (keys of the other query of the pair) are zeroed. Returns 1 / sum of the exponentials. */
static inline TARGET v8f softmax_row(v8f *row, int64_t p0, int64_t p1, int64_t lo, int64_t hi)
{
    v8f top = row[lo];
    for (int64_t p = lo + 1; p < hi; p++) top = (v8f)_mm256_max_ps((__m256)row[p], (__m256)top);
    v8f sum = {0};
    for (int64_t p = lo; p < hi; p++) {
        row[p] = exp8(row[p] - top);
        sum += row[p];
    }
    for (int64_t p = p0; p < lo; p++) row[p] = (v8f){0};
    for (int64_t p = hi; p < p1; p++) row[p] = (v8f){0};
    return 1.0f / sum;
}

/* out{0,1}[j] = sum_q w{0,1}[q] v[j Lp + q] over keys [p0, p1), for 4 channels j. */
static inline TARGET void weigh_values(const v8f *w0, const v8f *w1, const v8f *v, int64_t Lp,
                                       int64_t p0, int64_t p1, v8f *out0, v8f *out1)
{
    v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
    for (int64_t q = p0; q < p1; q++) {
        const v8f u = w0[q], t = w1[q];
        const v8f v0 = v[q], v1 = v[Lp + q], v2 = v[2 * Lp + q], v3 = v[3 * Lp + q];
        a0 += u * v0, a1 += u * v1, a2 += u * v2, a3 += u * v3;
        b0 += t * v0, b1 += t * v1, b2 += t * v2, b3 += t * v3;
    }
    out0[0] = a0, out0[1] = a1, out0[2] = a2, out0[3] = a3;
    out1[0] = b0, out1[1] = b1, out1[2] = b2, out1[3] = b3;
}

/* out0[j] += sum_q w0[q] r[j T + q] and out1[j] += sum_q w1[q] r[j T + q - 1] (query o1 = o0 + 1
 * sits one entry further along the table), for 4 channels j: each broadcast entry r[j T + q]
 * serves w0[q] and w1[q + 1]. w0[p0 - 1] and w1[p1] are zero (the buffers' margins). */
static inline TARGET void weigh_table(const v8f *w0, const v8f *w1, const float *r, int64_t T,
                                      int64_t p0, int64_t p1, v8f *out0, v8f *out1)
{
    v8f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, b0 = {0}, b1 = {0}, b2 = {0}, b3 = {0};
    for (int64_t q = p0 - 1; q < p1; q++) {
        const v8f u = w0[q], t = w1[q + 1];
        const float r0 = r[q], r1 = r[T + q], r2 = r[2 * T + q], r3 = r[3 * T + q];
        a0 += u * r0, a1 += u * r1, a2 += u * r2, a3 += u * r3;
        b0 += t * r0, b1 += t * r1, b2 += t * r2, b3 += t * r3;
    }
    out0[0] += a0, out0[1] += a1, out0[2] += a2, out0[3] += a3;
    out1[0] += b0, out1[1] += b1, out1[2] += b2, out1[3] += b3;
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
