/* Position-sensitive axial attention along one axis with its backward pass, on x86-64 CPUs with
 * AVX2 and FMA (the compiled half of axial_deeplab/layers/fused_train.py, which checks every size
 * and falls back to the PyTorch path where this module is missing or the CPU lacks AVX2).
 *
 * Input: the batch-normalised q/k/v projection of a feature map, any strides, channels
 * [q (G dk) | k (G dk) | v (G dv)], and the logit batch norm's scales s0, s1, s2 per head. Work
 * runs per head and group of 8 lines along the axis (lines of different images may share the 8;
 * the lines are the 8 lanes of a vector, so a relative-table entry, which depends only on the
 * pair of positions, is one broadcast shared by 8 lines). With d = p - o the key position minus
 * the query position, T = 2L + 1 table entries per row (entry d + L, a zero beyond each end):
 *
 *     A[o, p] = q1_o . k_p + q2_o . RQ[d] + k3_p . RK[d]   (q1 = s0 q, q2 = s1 q, k3 = s2 k)
 *     W[o, :] = softmax over the keys lo[o] <= p < hi[o]
 *     out[o] = [sum_p W[o, p] v_p | sum_p W[o, p] RV[d]]    (channels [0, C) and [C, 2C))
 *
 * The forward pass keeps W (row o holds keys lo[o].. at offsets 0..; rows `win` apart). The
 * backward pass, for the gradients gsv, gsve of the two halves of the output:
 *
 *     gW[o, p] = gsv_o . v_p + gsve_o . RV[d],   gA = W (gW - sum_p W gW)
 *     gq1_o = sum_p gA k_p,  gq2_o = sum_p gA RQ[d],  gk_p = sum_o gA q1_o,  gk3_p = sum_o gA RK[d]
 *     gv_p = sum_o W gsv_o,  gRQ[d] = sum gA q2_o,  gRK[d] = sum gA k3_p,  gRV[d] = sum W gsve_o
 *     gq = s0 gq1 + s1 gq2,  gk += s2 gk3,  gs0 = sum q . gq1,  gs1 = sum q . gq2,  gs2 = sum k . gk3
 *
 * The table and scale gradients sum over the lanes too: each task accumulates them per lane and
 * adds the lane sums to the caller's float buffer, one buffer per concurrent call. The output
 * batch norm can be folded in (its statistics kept as the outputs are written, its backward
 * applied while the backward pass gathers the outputs' gradients), and the logit batch norm's
 * statistics have their own passes (moments_task).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_fused_simd.h"

/* A feature map [N, channels, ...] read or written as element (image n, line l, channel c,
 * position p) at base + n s_n + l s_l + c s_c + p s_p. */
typedef struct {
    float *base;
    int64_t s_n, s_l, s_c, s_p;
} Operand;

/* The projection (read); the output [N, 2C, ...] (written by the forward pass; in the backward
 * pass, its gradient, or with the output norm folded in the gradient of the normalised sum
 * [N, C, ...]); the projection's gradient (written by the backward pass); the forward pass's
 * output, read back by the backward pass when the output norm is folded in. */
enum { QKV, OUT, GQKV, XOUT, OPERANDS };

/* The call's descriptor, an int64 array (fused_train.py writes it): OPERANDS x (address, s_n, s_l,
 * s_c, s_p), the addresses of rq, rk, rv, lo, hi, w, gr, scales, sum_q, gram_q, sum_k, gram_k,
 * coef, sums, then images, lines per image, heads, L, dk, dv, win. */
enum { D_TABLES = 5 * OPERANDS, D_SIZES = D_TABLES + 14, D_LENGTH = D_SIZES + 7 };

/* What a call runs on its tasks. */
enum { ATTEND, ATTEND_BACKWARD, MOMENTS, MOMENTS_BACKWARD, NORM_SUMS };

typedef struct {
    Operand x[OPERANDS];
    const float *rq, *rk, *rv;  /* [dk][T], [dk][T], [dv][T] */
    const int32_t *lo, *hi;     /* [L] each, or NULL: every query sees every key */
    float *w;                   /* [tasks][L][win][8] */
    float *gr;                  /* backward: += the gradients of rq, rk, rv, then of s0, s1, s2 */
    const float *scales;        /* [3][G]: s0, s1, s2 */
    /* The logit moments (see moments_task): the window sums and Gram matrices of the relative
     * tables seen by each query (sum_q [dk][L], gram_q [L][dk][dk]) and key (sum_k, gram_k), the
     * backward pass's coefficients [6][G] (d loss / d of each sum), the sums [6][G] (+=), and
     * the backward pass's table gradients (+= into gr: sum_q, gram_q, sum_k, gram_k). The output
     * norm folded into the attention's passes: its backward coefficients coef [4][2C] (a, b, m,
     * c in g_out = a dy + b (out - m) + c per output channel; NULL: OUT holds g_out itself), the
     * count, mean and sum of squared deviations of each output channel [2C][3] (ATTEND, or
     * NULL; combined with each task's by Chan's formula), or (NORM_SUMS, coef = the means m
     * [2C]) the sums of dy, dy (out[:C] - m) and dy (out[C:] - m) per channel of the sum
     * [3][C]. */
    const float *sum_q, *gram_q, *sum_k, *gram_k, *coef;
    double *sums;
    int64_t images, lines, heads, length, dk, dv, win;
} Args;

/* Tasks: every (group of 8 of the images' lines, head), task t = head * groups + group: tasks
 * in a row read neighbouring lines, which often share cache lines (the height axis's lines are
 * contiguous in an [N, C, H, W] map). */
static int64_t groups(const Args *a) { return (a->images * a->lines + 7) / 8; }
static int64_t task_count(const Args *a) { return groups(a) * a->heads; }

#ifdef FUSED_X86

static inline void window(const Args *a, int64_t o, int64_t *lo, int64_t *hi)
{
    *lo = a->lo == NULL ? 0 : a->lo[o];
    *hi = a->lo == NULL ? a->length : a->hi[o];
}

/* Where a task's lines lie in one operand: each lane's element offset (lanes of different images
 * may share a task), how many lanes are real lines, and whether they are 8 consecutive floats. */
typedef struct {
    int64_t off[8];
    int count, dense;
} Lanes;

static void task_lanes(const Args *a, const Operand *x, int64_t group, Lanes *m)
{
    const int64_t total = a->images * a->lines;
    m->count = total - 8 * group < 8 ? (int)(total - 8 * group) : 8;
    for (int i = 0; i < m->count; i++) {
        const int64_t line = 8 * group + i;
        m->off[i] = line / a->lines * x->s_n + line % a->lines * x->s_l;
    }
    m->dense = m->count == 8 && x->s_l == 1 && m->off[7] - m->off[0] == 7;
}

/* dst[c Lp + p] = channel ch0 + c of operand x at position p < L for the task's lines (missing
 * lanes zero), c < d; positions L .. Lp - 1 zero. Lines 8 apart in memory are read 8 x 8 at a
 * time and transposed where positions or channels are contiguous, else one float at a time. */
static TARGET void gather(const Args *a, const Operand *x, int64_t group, int64_t ch0, int64_t d,
                          int64_t Lp, v8f *dst)
{
    const int64_t L = a->length, sc = x->s_c, sp = x->s_p;
    const float *src = x->base + ch0 * sc;
    Lanes m;
    task_lanes(a, x, group, &m);
    for (int64_t c = 0; c < d; c++)
        for (int64_t p = L; p < Lp; p++) dst[c * Lp + p] = (v8f){0};
    if (m.dense) {
        for (int64_t c = 0; c < d; c++)
            for (int64_t p = 0; p < L; p++)
                memcpy(&dst[c * Lp + p], src + m.off[0] + c * sc + p * sp, sizeof(v8f));
        return;
    }
    int64_t c_done = 0, p_done = 0; /* what the transposing loops covered */
    __m256 r[8], t[8];
    if (m.count == 8 && sp == 1) {
        p_done = L / 8 * 8, c_done = d;
        for (int64_t c = 0; c < d; c++)
            for (int64_t p = 0; p < p_done; p += 8) {
                for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + m.off[i] + c * sc + p);
                transpose8(r, t);
                for (int j = 0; j < 8; j++) dst[c * Lp + p + j] = (v8f)t[j];
            }
    } else if (m.count == 8 && sc == 1) {
        c_done = d / 8 * 8, p_done = L;
        for (int64_t p = 0; p < L; p++)
            for (int64_t c = 0; c < c_done; c += 8) {
                for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + m.off[i] + c + p * sp);
                transpose8(r, t);
                for (int j = 0; j < 8; j++) dst[(c + j) * Lp + p] = (v8f)t[j];
            }
    }
    for (int64_t c = 0; c < d; c++)
        for (int64_t p = c < c_done ? p_done : 0; p < L; p++) {
            v8f y = {0};
            for (int i = 0; i < m.count; i++) y[i] = src[m.off[i] + c * sc + p * sp];
            dst[c * Lp + p] = y;
        }
}

/* The inverse of gather: channel ch0 + c of operand x at position p < L from src[c Lp + p], for
 * the task's lines. */
static TARGET void scatter(const Args *a, const Operand *x, int64_t group, int64_t ch0, int64_t d,
                           int64_t Lp, const v8f *src)
{
    const int64_t L = a->length, sc = x->s_c, sp = x->s_p;
    float *dst = x->base + ch0 * sc;
    Lanes m;
    task_lanes(a, x, group, &m);
    if (m.dense) {
        for (int64_t c = 0; c < d; c++)
            for (int64_t p = 0; p < L; p++)
                memcpy(dst + m.off[0] + c * sc + p * sp, &src[c * Lp + p], sizeof(v8f));
        return;
    }
    int64_t c_done = 0, p_done = 0;
    __m256 r[8], t[8];
    if (m.count == 8 && sp == 1) {
        p_done = L / 8 * 8, c_done = d;
        for (int64_t c = 0; c < d; c++)
            for (int64_t p = 0; p < p_done; p += 8) {
                for (int j = 0; j < 8; j++) r[j] = (__m256)src[c * Lp + p + j];
                transpose8(r, t);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + m.off[i] + c * sc + p, t[i]);
            }
    } else if (m.count == 8 && sc == 1) {
        c_done = d / 8 * 8, p_done = L;
        for (int64_t p = 0; p < L; p++)
            for (int64_t c = 0; c < c_done; c += 8) {
                for (int j = 0; j < 8; j++) r[j] = (__m256)src[(c + j) * Lp + p];
                transpose8(r, t);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + m.off[i] + c + p * sp, t[i]);
            }
    }
    for (int64_t c = 0; c < d; c++)
        for (int64_t p = c < c_done ? p_done : 0; p < L; p++)
            for (int i = 0; i < m.count; i++) dst[m.off[i] + c * sc + p * sp] = src[c * Lp + p][i];
}

/* dst = src * s, over n vectors. */
static inline TARGET void scaled(v8f *dst, const v8f *src, float s, int64_t n)
{
    for (int64_t i = 0; i < n; i++) dst[i] = src[i] * s;
}

/* The task's operands: q1, q2, k, k3 (dk rows each) and v (dv rows) from the projection, and q
 * itself in q (or NULL: not kept). */
static TARGET void load_operands(const Args *a, int64_t group, int64_t h, int64_t Lp, v8f *q,
                                 v8f *q1, v8f *q2, v8f *k, v8f *k3, v8f *v)
{
    const int64_t G = a->heads, dk = a->dk, dv = a->dv;
    const float *s = a->scales;
    q = q == NULL ? q2 : q;
    gather(a, &a->x[QKV], group, h * dk, dk, Lp, q);
    scaled(q1, q, s[h], dk * Lp);
    scaled(q2, q, s[G + h], dk * Lp);
    gather(a, &a->x[QKV], group, G * dk + h * dk, dk, Lp, k);
    scaled(k3, k, s[2 * G + h], dk * Lp);
    gather(a, &a->x[QKV], group, 2 * G * dk + h * dv, dv, Lp, v);
}

/* Rows of Lp >= L + 1 vectors (an even count): one zero past the last position at least. */
static inline int64_t padded(int64_t L) { return (L + 2) & ~(int64_t)1; }

/* The key windows of queries o0 and o1 = o0 + 1 (o1 = L, past the end of an odd axis: a phantom
 * with o0's window and zero operands, computed and not stored), and their union [p0, p1). */
typedef struct {
    int64_t lo0, hi0, lo1, hi1, p0, p1;
} Pair;

static inline Pair pair_windows(const Args *a, int64_t o0)
{
    Pair w;
    window(a, o0, &w.lo0, &w.hi0);
    w.lo1 = w.lo0, w.hi1 = w.hi0;
    if (o0 + 1 < a->length) window(a, o0 + 1, &w.lo1, &w.hi1);
    w.p0 = w.lo0 < w.lo1 ? w.lo0 : w.lo1;
    w.p1 = w.hi0 > w.hi1 ? w.hi0 : w.hi1;
    return w;
}

/* 1 in the task's real lanes (lines), 0 in the padding ones. */
static inline TARGET v8f lane_mask(const Args *a, int64_t group)
{
    const int64_t left = a->images * a->lines - 8 * group;
    v8f m;
    for (int i = 0; i < 8; i++) m[i] = i < left ? 1.0f : 0.0f;
    return m;
}

static inline TARGET float lane_sum(v8f x)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128((__m256)x), _mm256_extractf128_ps((__m256)x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The statistics of channels ch0 + c, c < d, updated with those of x[c Lp + p] over the real
 * lanes (count) and p < L: sums[3 ch] = count, sums[3 ch + 1] = mean, sums[3 ch + 2] = sum of
 * squared deviations from it. The task's own deviations are from its own mean (two passes in
 * L1), and the two sets combine by Chan et al.'s formula: a batch mean far from zero costs no
 * precision, as it would in sums of squares. */
static TARGET void channel_stats(const Args *a, const v8f *x, v8f mask, int count, int64_t ch0,
                                 int64_t d, int64_t Lp)
{
    const double n = (double)count * (double)a->length;
    for (int64_t c = 0; c < d; c++) {
        v8f s = {0}, s2 = {0};
        for (int64_t p = 0; p < a->length; p++) s += x[c * Lp + p] * mask;
        const float m = lane_sum(s) / (float)n;
        for (int64_t p = 0; p < a->length; p++) {
            const v8f y = (x[c * Lp + p] - m) * mask;
            s2 += y * y;
        }
        double *st = a->sums + 3 * (ch0 + c);
        const double total = st[0] + n, delta = (double)m - st[1];
        st[1] += delta * n / total;
        st[2] += (double)lane_sum(s2) + delta * delta * st[0] * n / total;
        st[0] = total;
    }
}

/* The gradients of the task's two output terms, g_sv and g_sve (dv rows each): gathered from OUT,
 * or with the output norm folded in, a dy + b out + c from dy (OUT) and the saved output (XOUT),
 * zero in the padding lanes and positions. tmp: dv Lp vectors. */
static TARGET void load_output_grads(const Args *a, int64_t group, int64_t h, int64_t Lp, v8f *gsv,
                                     v8f *gsve, v8f *tmp)
{
    const int64_t L = a->length, dv = a->dv, C = a->heads * dv;
    if (a->coef == NULL) {
        gather(a, &a->x[OUT], group, h * dv, dv, Lp, gsv);
        gather(a, &a->x[OUT], group, C + h * dv, dv, Lp, gsve);
        return;
    }
    const v8f mask = lane_mask(a, group);
    const float *ca = a->coef, *cb = ca + 2 * C, *cm = cb + 2 * C, *cc = cm + 2 * C;
    gather(a, &a->x[OUT], group, h * dv, dv, Lp, tmp);
    gather(a, &a->x[XOUT], group, h * dv, dv, Lp, gsv);
    gather(a, &a->x[XOUT], group, C + h * dv, dv, Lp, gsve);
    for (int64_t c = 0; c < dv; c++) {
        const int64_t i = h * dv + c, j = C + h * dv + c;
        for (int64_t p = 0; p < L; p++) {
            const v8f dy = tmp[c * Lp + p];
            gsv[c * Lp + p] = (dy * ca[i] + (gsv[c * Lp + p] - cm[i]) * cb[i] + cc[i]) * mask;
            gsve[c * Lp + p] = (dy * ca[j] + (gsve[c * Lp + p] - cm[j]) * cb[j] + cc[j]) * mask;
        }
    }
}

/* NORM_SUMS: sums[ch], sums[C + ch], sums[2 C + ch] += the sums of dy, dy (out[:C] - m) and
 * dy (out[C:] - m) over the task's lines and positions, ch = h dv + c, c < dv, m = coef (the
 * channels' means). work: 3 dv Lp. */
static TARGET void norm_sums_task(const Args *a, int64_t t, v8f *work)
{
    const int64_t L = a->length, Lp = padded(L), dv = a->dv, C = a->heads * dv;
    const int64_t group = t % groups(a), h = t / groups(a);
    v8f *dy = work, *x1 = dy + dv * Lp, *x2 = x1 + dv * Lp;
    gather(a, &a->x[OUT], group, h * dv, dv, Lp, dy);
    gather(a, &a->x[XOUT], group, h * dv, dv, Lp, x1);
    gather(a, &a->x[XOUT], group, C + h * dv, dv, Lp, x2);
    for (int64_t c = 0; c < dv; c++) {
        const float m1 = a->coef[h * dv + c], m2 = a->coef[C + h * dv + c];
        v8f s0 = {0}, s1 = {0}, s2 = {0};
        for (int64_t p = 0; p < L; p++) {
            const v8f g = dy[c * Lp + p]; /* (zero in the padding) */
            s0 += g, s1 += g * (x1[c * Lp + p] - m1), s2 += g * (x2[c * Lp + p] - m2);
        }
        a->sums[h * dv + c] += (double)lane_sum(s0);
        a->sums[C + h * dv + c] += (double)lane_sum(s1);
        a->sums[2 * C + h * dv + c] += (double)lane_sum(s2);
    }
}

/* The forward pass of task t: W and both outputs. Queries two at a time: their logits for 4 keys
 * are 8 accumulators in registers, and the tables at distance p - o1 are those at p - 1 - o0, so
 * 5 entries serve the 8 pairs. work: (4 dk + 3 dv + 2) Lp + 4 vectors. */
static TARGET void forward_task(const Args *a, int64_t t, v8f *work)
{
    const int64_t L = a->length, Lp = padded(L), dk = a->dk, dv = a->dv, T = 2 * L + 1;
    const int64_t win = a->win, group = t % groups(a), h = t / groups(a);
    v8f *q1 = work, *k = q1 + dk * Lp, *q2 = k + dk * Lp, *k3 = q2 + dk * Lp, *v = k3 + dk * Lp;
    v8f *sv = v + dv * Lp, *sve = sv + dv * Lp;
    v8f *w0 = sve + dv * Lp + 1, *w1 = w0 + Lp + 2; /* a margin of one key each side */
    load_operands(a, group, h, Lp, NULL, q1, q2, k, k3, v);
    v8f *w = (v8f *)a->w + t * L * win;
    const float *rq = a->rq + L, *rk = a->rk + L, *rv = a->rv + L;
    for (int64_t o0 = 0; o0 < L; o0 += 2) {
        const int64_t o1 = o0 + 1;
        const Pair pw = pair_windows(a, o0);
        const int64_t p0 = pw.p0, p1 = pw.p1;
        int64_t p = p0;
        for (; p + 4 <= p1; p += 4) {
            v8f a0[4] = {{0}}, a1[4] = {{0}};
            for (int64_t c = 0; c < dk; c++) {
                const v8f x0 = q1[c * Lp + o0], x1 = q1[c * Lp + o1];
                const v8f y0 = q2[c * Lp + o0], y1 = q2[c * Lp + o1];
                const float *r = rq + c * T + p - o0, *s = rk + c * T + p - o0;
                const v8f *kc = k + c * Lp + p, *k3c = k3 + c * Lp + p;
                for (int j = 0; j < 4; j++) {
                    const v8f key = kc[j], key3 = k3c[j];
                    a0[j] = a0[j] + x0 * key + y0 * r[j] + key3 * s[j];
                    a1[j] = a1[j] + x1 * key + y1 * r[j - 1] + key3 * s[j - 1];
                }
            }
            for (int j = 0; j < 4; j++) w0[p + j] = a0[j], w1[p + j] = a1[j];
        }
        for (; p < p1; p++) {
            v8f b0 = {0}, b1 = {0};
            for (int64_t c = 0; c < dk; c++) {
                const v8f key = k[c * Lp + p], key3 = k3[c * Lp + p];
                const float *r = rq + c * T + p - o0, *s = rk + c * T + p - o0;
                b0 = b0 + q1[c * Lp + o0] * key + q2[c * Lp + o0] * r[0] + key3 * s[0];
                b1 = b1 + q1[c * Lp + o1] * key + q2[c * Lp + o1] * r[-1] + key3 * s[-1];
            }
            w0[p] = b0, w1[p] = b1;
        }
        const v8f z0 = softmax_row(w0, p0, p1, pw.lo0, pw.hi0);
        const v8f z1 = softmax_row(w1, p0, p1, pw.lo1, pw.hi1);
        for (p = p0; p < p1; p++) w0[p] *= z0, w1[p] *= z1;
        w0[p0 - 1] = w1[p1] = (v8f){0};
        memcpy(w + o0 * win, w0 + pw.lo0, (size_t)(pw.hi0 - pw.lo0) * sizeof(v8f));
        if (o1 < L) memcpy(w + o1 * win, w1 + pw.lo1, (size_t)(pw.hi1 - pw.lo1) * sizeof(v8f));
        for (int64_t c0 = 0; c0 < dv; c0 += 4) {
            const int width = dv - c0 < 4 ? (int)(dv - c0) : 4;
            v8f out0[4], out1[4], rel0[4] = {{0}}, rel1[4] = {{0}};
            if (width == 4) {
                weigh_values(w0, w1, v + c0 * Lp, Lp, p0, p1, out0, out1);
                weigh_table(w0, w1, rv + c0 * T - o0, T, p0, p1, rel0, rel1);
            } else {
                for (int j = 0; j < width; j++) {
                    const float *r = rv + (c0 + j) * T - o0;
                    const v8f *vc = v + (c0 + j) * Lp;
                    v8f b0 = {0}, b1 = {0}, e0 = {0}, e1 = {0};
                    for (p = p0; p < p1; p++) {
                        b0 += w0[p] * vc[p], b1 += w1[p] * vc[p];
                        e0 += w0[p] * r[p], e1 += w1[p] * r[p - 1];
                    }
                    out0[j] = b0, out1[j] = b1, rel0[j] = e0, rel1[j] = e1;
                }
            }
            for (int j = 0; j < width; j++) {
                sv[(c0 + j) * Lp + o0] = out0[j], sv[(c0 + j) * Lp + o1] = out1[j];
                sve[(c0 + j) * Lp + o0] = rel0[j], sve[(c0 + j) * Lp + o1] = rel1[j];
            }
        }
    }
    if (a->sums != NULL) { /* the output norm's batch statistics */
        const v8f mask = lane_mask(a, group);
        const int count = (int)lane_sum(mask);
        channel_stats(a, sv, mask, count, h * dv, dv, Lp);
        channel_stats(a, sve, mask, count, a->heads * dv + h * dv, dv, Lp);
    }
    scatter(a, &a->x[OUT], group, h * dv, dv, Lp, sv);
    scatter(a, &a->x[OUT], group, a->heads * dv + h * dv, dv, Lp, sve);
}

/* Axes up to this long with every key seen by every query run the backward pass's accumulations
 * as dense sums over the stored W and gA (below): their task buffer takes L x L vectors. */
enum { DENSE_MAX = 256 };

/* out[c Lp + p] += sum_o M[o L + p] X[c Lp + o], c < d, p < L (M: L x L rows): 4 channels by 2
 * positions at a time, 6 loads for 8 multiply-adds and nothing stored inside the loop. */
static TARGET void column_sums(const v8f *M, const v8f *X, v8f *out, int64_t d, int64_t L,
                               int64_t Lp)
{
    int64_t c = 0;
    for (; c + 4 <= d; c += 4) {
        int64_t p = 0;
        for (; p + 2 <= L; p += 2) {
            v8f s[4][2] = {{{0}}};
            for (int64_t o = 0; o < L; o++) {
                const v8f m0 = M[o * L + p], m1 = M[o * L + p + 1];
                for (int j = 0; j < 4; j++) {
                    const v8f x = X[(c + j) * Lp + o];
                    s[j][0] += m0 * x, s[j][1] += m1 * x;
                }
            }
            for (int j = 0; j < 4; j++) out[(c + j) * Lp + p] += s[j][0], out[(c + j) * Lp + p + 1] += s[j][1];
        }
        for (; p < L; p++)
            for (int j = 0; j < 4; j++) {
                v8f s0 = {0};
                for (int64_t o = 0; o < L; o++) s0 += M[o * L + p] * X[(c + j) * Lp + o];
                out[(c + j) * Lp + p] += s0;
            }
    }
    for (; c < d; c++)
        for (int64_t p = 0; p < L; p++) {
            v8f s0 = {0};
            for (int64_t o = 0; o < L; o++) s0 += M[o * L + p] * X[c * Lp + o];
            out[c * Lp + p] += s0;
        }
}

/* out[c T + e + L] += sum_o M[o L + o + e] X[c Lp + o (+ e if keyed)] over the pairs at distance
 * e = p - o, c < d, |e| < L: 4 channels at a time. */
static TARGET void diagonal_sums(const v8f *M, const v8f *X, int keyed, v8f *out, int64_t d,
                                 int64_t L, int64_t Lp)
{
    const int64_t T = 2 * L + 1;
    for (int64_t e = 1 - L; e < L; e++) {
        const int64_t o0 = e < 0 ? -e : 0, o1 = e < 0 ? L : L - e, shift = keyed ? e : 0;
        int64_t c = 0;
        for (; c + 4 <= d; c += 4) {
            v8f s[4] = {{0}};
            for (int64_t o = o0; o < o1; o++) {
                const v8f m = M[o * L + o + e];
                for (int j = 0; j < 4; j++) s[j] += m * X[(c + j) * Lp + o + shift];
            }
            for (int j = 0; j < 4; j++) out[(c + j) * T + e + L] += s[j];
        }
        for (; c < d; c++) {
            v8f s0 = {0};
            for (int64_t o = o0; o < o1; o++) s0 += M[o * L + o + e] * X[c * Lp + o + shift];
            out[c * T + e + L] += s0;
        }
    }
}

/* out[c Lp + p] += sum_o M[o L + p] R[c T + p - o + L] (R: a table of floats), c < d, p < L, by
 * distance: each table entry is one broadcast for 2 positions; 4 channels at a time. */
static TARGET void table_sums(const v8f *M, const float *R, v8f *out, int64_t d, int64_t L,
                              int64_t Lp)
{
    const int64_t T = 2 * L + 1;
    for (int64_t p = 0; p < L; p++) {
        int64_t c = 0;
        for (; c + 4 <= d; c += 4) {
            v8f s[4] = {{0}};
            for (int64_t o = 0; o < L; o++) {
                const v8f m = M[o * L + p];
                for (int j = 0; j < 4; j++) s[j] += m * R[(c + j) * T + p - o + L];
            }
            for (int j = 0; j < 4; j++) out[(c + j) * Lp + p] += s[j];
        }
        for (; c < d; c++) {
            v8f s0 = {0};
            for (int64_t o = 0; o < L; o++) s0 += M[o * L + p] * R[c * T + p - o + L];
            out[c * Lp + p] += s0;
        }
    }
}

/* The backward pass of task t, queries two at a time as in the forward pass. For the pair,
 * u{0,1} = its W rows and g{0,1} = its gA rows (zero outside each window; margins of one zero key
 * each side): a table entry at distance q - o0 takes u0[q] and u1[q + 1] (or g0[q], g1[q + 1]).
 * work: (9 dk + 5 dv + 6) Lp + (2 dk + dv) T + 8 vectors, and L x L for dense sums. */
static TARGET void backward_task(const Args *a, int64_t t, v8f *work)
{
    const int64_t L = a->length, Lp = padded(L), dk = a->dk, dv = a->dv, T = 2 * L + 1;
    const int64_t win = a->win, G = a->heads, group = t % groups(a), h = t / groups(a);
    v8f *q1 = work, *k = q1 + dk * Lp, *q2 = k + dk * Lp, *k3 = q2 + dk * Lp, *v = k3 + dk * Lp;
    v8f *gsv = v + dv * Lp, *gsve = gsv + dv * Lp;
    v8f *gq1 = gsve + dv * Lp, *gk = gq1 + dk * Lp, *gq2 = gk + dk * Lp, *gk3 = gq2 + dk * Lp;
    v8f *gv = gk3 + dk * Lp, *grq = gv + dv * Lp, *grk = grq + dk * T, *grv = grk + dk * T;
    v8f *u0 = grv + dv * T + 1, *u1 = u0 + Lp + 2, *g0 = u1 + Lp + 2, *g1 = g0 + Lp + 2;
    v8f *gw0 = g1 + Lp + 1, *gw1 = gw0 + Lp, *q = gw1 + Lp, *tmp = q + dk * Lp;
    v8f *ga = tmp + dv * Lp; /* dense: gA [L][L] */
    const int dense = a->lo == NULL && L <= DENSE_MAX;
    load_operands(a, group, h, Lp, q, q1, q2, k, k3, v);
    load_output_grads(a, group, h, Lp, gsv, gsve, tmp);
    memset(gk, 0, (size_t)(dk * Lp) * sizeof(v8f));
    memset(gk3, 0, (size_t)(dk * Lp) * sizeof(v8f));
    memset(gv, 0, (size_t)(dv * Lp + (2 * dk + dv) * T) * sizeof(v8f)); /* gv and the tables' */
    const v8f *w = (const v8f *)a->w + t * L * win;
    const float *rq = a->rq + L, *rk = a->rk + L, *rv = a->rv + L;
    for (int64_t o0 = 0; o0 < L; o0 += 2) {
        const int64_t o1 = o0 + 1;
        const Pair pw = pair_windows(a, o0);
        const int64_t p0 = pw.p0, p1 = pw.p1;
        int64_t p;
        for (p = p0 - 1; p <= p1; p++) u0[p] = u1[p] = (v8f){0};
        memcpy(u0 + pw.lo0, w + o0 * win, (size_t)(pw.hi0 - pw.lo0) * sizeof(v8f));
        if (o1 < L) memcpy(u1 + pw.lo1, w + o1 * win, (size_t)(pw.hi1 - pw.lo1) * sizeof(v8f));
        /* gW of both queries, 4 keys at a time. */
        for (p = p0; p + 4 <= p1; p += 4) {
            v8f b0[4] = {{0}}, b1[4] = {{0}};
            for (int64_t c = 0; c < dv; c++) {
                const v8f x0 = gsv[c * Lp + o0], x1 = gsv[c * Lp + o1];
                const v8f y0 = gsve[c * Lp + o0], y1 = gsve[c * Lp + o1];
                const float *r = rv + c * T + p - o0;
                const v8f *vc = v + c * Lp + p;
                for (int j = 0; j < 4; j++) {
                    b0[j] = b0[j] + x0 * vc[j] + y0 * r[j];
                    b1[j] = b1[j] + x1 * vc[j] + y1 * r[j - 1];
                }
            }
            for (int j = 0; j < 4; j++) gw0[p + j] = b0[j], gw1[p + j] = b1[j];
        }
        for (; p < p1; p++) {
            v8f b0 = {0}, b1 = {0};
            for (int64_t c = 0; c < dv; c++) {
                const float *r = rv + c * T + p - o0;
                b0 = b0 + gsv[c * Lp + o0] * v[c * Lp + p] + gsve[c * Lp + o0] * r[0];
                b1 = b1 + gsv[c * Lp + o1] * v[c * Lp + p] + gsve[c * Lp + o1] * r[-1];
            }
            gw0[p] = b0, gw1[p] = b1;
        }
        /* Through the softmax: gA = W (gW - sum_p W gW). */
        v8f dot0 = {0}, dot1 = {0};
        for (p = p0; p < p1; p++) dot0 += u0[p] * gw0[p], dot1 += u1[p] * gw1[p];
        for (p = p0; p < p1; p++) g0[p] = u0[p] * (gw0[p] - dot0), g1[p] = u1[p] * (gw1[p] - dot1);
        g0[p0 - 1] = g1[p0 - 1] = g0[p1] = g1[p1] = (v8f){0};
        if (dense) { /* gA kept: the sums over queries run after the loop */
            memcpy(ga + o0 * L, g0, (size_t)L * sizeof(v8f));
            if (o1 < L) memcpy(ga + o1 * L, g1, (size_t)L * sizeof(v8f));
            for (int64_t c = 0; c < dk; c++) {
                const v8f *kc = k + c * Lp;
                const float *r = rq + c * T - o0;
                v8f a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0};
                for (p = 0; p < L; p++) {
                    const v8f e0 = g0[p], e1 = g1[p], key = kc[p];
                    a10 += e0 * key, a11 += e1 * key;
                    a20 += e0 * r[p], a21 += e1 * r[p - 1];
                }
                gq1[c * Lp + o0] = a10, gq1[c * Lp + o1] = a11;
                gq2[c * Lp + o0] = a20, gq2[c * Lp + o1] = a21;
            }
            continue;
        }
        /* The values and their table: gv_p += u0 x0 + u1 x1, gRV[q - o0] += u0[q] y0 + u1[q+1] y1. */
        for (int64_t c = 0; c < dv; c++) {
            const v8f x0 = gsv[c * Lp + o0], x1 = gsv[c * Lp + o1];
            const v8f y0 = gsve[c * Lp + o0], y1 = gsve[c * Lp + o1];
            v8f *gvc = gv + c * Lp, *grvc = grv + c * T + L - o0;
            grvc[p0 - 1] += u1[p0] * y1;
            for (p = p0; p < p1; p++) {
                gvc[p] = gvc[p] + u0[p] * x0 + u1[p] * x1;
                grvc[p] = grvc[p] + u0[p] * y0 + u1[p + 1] * y1;
            }
        }
        /* The logits' operands and tables. */
        for (int64_t c = 0; c < dk; c++) {
            const v8f x0 = q1[c * Lp + o0], x1 = q1[c * Lp + o1];
            const v8f y0 = q2[c * Lp + o0], y1 = q2[c * Lp + o1];
            const v8f *kc = k + c * Lp, *k3c = k3 + c * Lp;
            const float *r = rq + c * T - o0, *s = rk + c * T - o0;
            v8f *gkc = gk + c * Lp, *gk3c = gk3 + c * Lp;
            v8f *grqc = grq + c * T + L - o0, *grkc = grk + c * T + L - o0;
            v8f a10 = {0}, a11 = {0}, a20 = {0}, a21 = {0};
            grqc[p0 - 1] += g1[p0] * y1;
            grkc[p0 - 1] += g1[p0] * k3c[p0];
            for (p = p0; p < p1; p++) {
                const v8f e0 = g0[p], e1 = g1[p], e1n = g1[p + 1], key = kc[p];
                a10 += e0 * key, a11 += e1 * key;
                a20 += e0 * r[p], a21 += e1 * r[p - 1];
                gkc[p] = gkc[p] + e0 * x0 + e1 * x1;
                gk3c[p] = gk3c[p] + e0 * s[p] + e1 * s[p - 1];
                grqc[p] = grqc[p] + e0 * y0 + e1n * y1;
                grkc[p] = grkc[p] + e0 * k3c[p] + e1n * k3c[p + 1];
            }
            gq1[c * Lp + o0] = a10, gq1[c * Lp + o1] = a11;
            gq2[c * Lp + o0] = a20, gq2[c * Lp + o1] = a21;
        }
    }
    if (dense) {
        column_sums(w, gsv, gv, dv, L, Lp);
        diagonal_sums(w, gsve, 0, grv, dv, L, Lp);
        column_sums(ga, q1, gk, dk, L, Lp);
        table_sums(ga, a->rk, gk3, dk, L, Lp);
        diagonal_sums(ga, q2, 0, grq, dk, L, Lp);
        diagonal_sums(ga, k3, 1, grk, dk, L, Lp);
    }
    /* The scales' gradients and the projection's: gq = s0 gq1 + s1 gq2, gk + s2 gk3. */
    const float *sc = a->scales;
    v8f gs0 = {0}, gs1 = {0}, gs2 = {0};
    for (int64_t c = 0; c < dk; c++)
        for (int64_t i = c * Lp; i < c * Lp + L; i++) { /* (the padding is not written) */
            gs0 += q[i] * gq1[i], gs1 += q[i] * gq2[i], gs2 += k[i] * gk3[i];
            gq1[i] = gq1[i] * sc[h] + gq2[i] * sc[G + h];
            gk[i] += gk3[i] * sc[2 * G + h];
        }
    scatter(a, &a->x[GQKV], group, h * dk, dk, Lp, gq1);
    scatter(a, &a->x[GQKV], group, G * dk + h * dk, dk, Lp, gk);
    scatter(a, &a->x[GQKV], group, 2 * G * dk + h * dv, dv, Lp, gv);
    float *gr = a->gr;
    for (int64_t i = 0; i < (2 * dk + dv) * T; i++) gr[i] += lane_sum(grq[i]);
    gr += (2 * dk + dv) * T;
    gr[h] += lane_sum(gs0), gr[G + h] += lane_sum(gs1), gr[2 * G + h] += lane_sum(gs2);
}

/* The sums of the three logit terms and of their squares over the task's lines and pairs, for
 * batch-norm statistics without forming the terms (the compiled TermMoments of logit_stats.py):
 *
 *     qk: sum_o q_o . sum_p k_p,          sum_{c,c'} (sum_o q_o q_o^T) (sum_p k_p k_p^T)
 *     qr: sum_o q_o . sum_q[:, o],        sum_o q_o^T gram_q[o] q_o
 *     kr: sum_p k_p . sum_k[:, p],        sum_p k_p^T gram_k[p] k_p
 *
 * (moments[6][G]: the three sums, then the three sums of squares.) Backward, for coefficients
 * (t0, t1, t2, u0, u1, u2) = d loss / d of each: gq_o = t0 sum_p k_p + t1 sum_q[:, o]
 * + 2 u0 (sum_p k_p k_p^T) q_o + 2 u1 gram_q[o] q_o, and likewise for gk; g sum_q[:, o] =
 * t1 sum q_o, g gram_q[o] = u1 sum q_o q_o^T (and for the keys), kept per lane after the task's
 * own work (2 dk (L + L dk) vectors, zeroed by run() and summed over the lanes into gr). work:
 * (4 dk + 2 dk dk + 4) Lp vectors, and those. */
static TARGET void moments_task(const Args *a, int64_t t, v8f *work, int backward)
{
    const int64_t L = a->length, Lp = padded(L), dk = a->dk, G = a->heads;
    const int64_t group = t % groups(a), h = t / groups(a);
    v8f *q = work, *k = q + dk * Lp, *gq = k + dk * Lp, *gk = gq + dk * Lp;
    v8f *qq = gk + dk * Lp, *kk = qq + dk * dk, *qs = kk + dk * dk, *ks = qs + dk;
    gather(a, &a->x[QKV], group, h * dk, dk, Lp, q);
    gather(a, &a->x[QKV], group, G * dk + h * dk, dk, Lp, k);
    for (int64_t c = 0; c < dk; c++) {
        v8f x = {0}, y = {0};
        for (int64_t o = 0; o < L; o++) x += q[c * Lp + o], y += k[c * Lp + o];
        qs[c] = x, ks[c] = y;
        for (int64_t e = 0; e <= c; e++) {
            v8f u = {0}, v = {0};
            for (int64_t o = 0; o < L; o++)
                u += q[c * Lp + o] * q[e * Lp + o], v += k[c * Lp + o] * k[e * Lp + o];
            qq[c * dk + e] = qq[e * dk + c] = u, kk[c * dk + e] = kk[e * dk + c] = v;
        }
    }
    if (!backward) {
        v8f sums[6] = {{0}};
        for (int64_t c = 0; c < dk; c++) {
            sums[0] += qs[c] * ks[c];
            for (int64_t e = 0; e < dk; e++) sums[3] += qq[c * dk + e] * kk[c * dk + e];
            for (int64_t o = 0; o < L; o++) {
                sums[1] += q[c * Lp + o] * a->sum_q[c * L + o];
                sums[2] += k[c * Lp + o] * a->sum_k[c * L + o];
            }
        }
        for (int64_t o = 0; o < L; o++)
            for (int64_t c = 0; c < dk; c++) {
                v8f mq = {0}, mk = {0};
                const float *gram_q = a->gram_q + (o * dk + c) * dk;
                const float *gram_k = a->gram_k + (o * dk + c) * dk;
                for (int64_t e = 0; e < dk; e++)
                    mq += q[e * Lp + o] * gram_q[e], mk += k[e * Lp + o] * gram_k[e];
                sums[4] += q[c * Lp + o] * mq, sums[5] += k[c * Lp + o] * mk;
            }
        for (int i = 0; i < 6; i++) a->sums[i * G + h] += (double)lane_sum(sums[i]);
        return;
    }
    const float *cf = a->coef;
    const float t0 = cf[h], t1 = cf[G + h], t2 = cf[2 * G + h];
    const float u0 = 2 * cf[3 * G + h], u1 = 2 * cf[4 * G + h], u2 = 2 * cf[5 * G + h];
    /* The tables' gradients, per lane, summed over the lanes by run() after the last task. */
    v8f *g_sum_q = ks + dk, *g_gram_q = g_sum_q + dk * L;
    v8f *g_sum_k = g_gram_q + L * dk * dk, *g_gram_k = g_sum_k + dk * L;
    for (int64_t o = 0; o < L; o++)
        for (int64_t c = 0; c < dk; c++) {
            const float *gram_q = a->gram_q + (o * dk + c) * dk;
            const float *gram_k = a->gram_k + (o * dk + c) * dk;
            const v8f qc = q[c * Lp + o], kc = k[c * Lp + o];
            v8f x = ks[c] * t0 + a->sum_q[c * L + o] * t1;
            v8f y = qs[c] * t0 + a->sum_k[c * L + o] * t2;
            v8f *gg_q = g_gram_q + (o * dk + c) * dk, *gg_k = g_gram_k + (o * dk + c) * dk;
            for (int64_t e = 0; e < dk; e++) {
                const v8f qe = q[e * Lp + o], ke = k[e * Lp + o];
                x += (kk[c * dk + e] * u0 + gram_q[e] * u1) * qe;
                y += (qq[c * dk + e] * u0 + gram_k[e] * u2) * ke;
                gg_q[e] += qc * qe * cf[4 * G + h];
                gg_k[e] += kc * ke * cf[5 * G + h];
            }
            gq[c * Lp + o] = x, gk[c * Lp + o] = y;
            g_sum_q[c * L + o] += qc * t1;
            g_sum_k[c * L + o] += kc * t2;
        }
    scatter(a, &a->x[GQKV], group, h * dk, dk, Lp, gq);
    scatter(a, &a->x[GQKV], group, G * dk + h * dk, dk, Lp, gk);
}

static TARGET int run(const Args *a, int64_t first, int64_t last, int mode)
{
    const int64_t Lp = padded(a->length), dk = a->dk, dv = a->dv, T = 2 * a->length + 1;
    int64_t vectors = (4 * dk + 3 * dv + 2) * Lp + 4;
    if (mode == ATTEND_BACKWARD) {
        vectors = (9 * dk + 5 * dv + 6) * Lp + (2 * dk + dv) * T + 8;
        if (a->lo == NULL && a->length <= DENSE_MAX) vectors += a->length * a->length;
    }
    if (mode == NORM_SUMS) vectors = 3 * dv * Lp;
    const int64_t L = a->length, grads = 2 * dk * (L + L * dk); /* the moments' table gradients */
    if (mode == MOMENTS || mode == MOMENTS_BACKWARD) vectors = (4 * dk + 2 * dk * dk + 4) * Lp + grads;
    v8f *work = aligned_alloc(32, (size_t)vectors * sizeof(v8f));
    if (work == NULL) return -1;
    v8f *moment_grads = work + 4 * dk * Lp + 2 * dk * dk + 2 * dk; /* (after moments_task's own) */
    if (mode == MOMENTS_BACKWARD) memset(moment_grads, 0, (size_t)grads * sizeof(v8f));
    for (int64_t t = first; t < last; t++) {
        if (mode == ATTEND)
            forward_task(a, t, work);
        else if (mode == ATTEND_BACKWARD)
            backward_task(a, t, work);
        else if (mode == NORM_SUMS)
            norm_sums_task(a, t, work);
        else
            moments_task(a, t, work, mode == MOMENTS_BACKWARD);
    }
    if (mode == MOMENTS_BACKWARD)
        for (int64_t i = 0; i < grads; i++) a->gr[i] += lane_sum(moment_grads[i]);
    free(work);
    return 0;
}
#else
static int run(const Args *a, int64_t first, int64_t last, int mode)
{
    (void)a, (void)first, (void)last, (void)mode;
    return -2;
}
#endif

/* call(descriptor, first, last, mode): tasks [first, last) of the call described by the int64
 * array at address `descriptor` (see the enums above; fused_train.py checks it). */
static PyObject *call(PyObject *self, PyObject *args)
{
    (void)self;
    unsigned long long address;
    long long first, last;
    int mode;
    if (!PyArg_ParseTuple(args, "KLLi", &address, &first, &last, &mode)) return NULL;
    const int64_t *d = (const int64_t *)(uintptr_t)address;
    Args a;
    for (int i = 0; i < OPERANDS; i++) {
        const int64_t *e = d + 5 * i;
        a.x[i] = (Operand){(float *)(uintptr_t)e[0], e[1], e[2], e[3], e[4]};
    }
    const int64_t *tables = d + D_TABLES, *sizes = d + D_SIZES;
    a.rq = (const float *)(uintptr_t)tables[0];
    a.rk = (const float *)(uintptr_t)tables[1];
    a.rv = (const float *)(uintptr_t)tables[2];
    a.lo = (const int32_t *)(uintptr_t)tables[3];
    a.hi = (const int32_t *)(uintptr_t)tables[4];
    a.w = (float *)(uintptr_t)tables[5];
    a.gr = (float *)(uintptr_t)tables[6];
    a.scales = (const float *)(uintptr_t)tables[7];
    a.sum_q = (const float *)(uintptr_t)tables[8];
    a.gram_q = (const float *)(uintptr_t)tables[9];
    a.sum_k = (const float *)(uintptr_t)tables[10];
    a.gram_k = (const float *)(uintptr_t)tables[11];
    a.coef = (const float *)(uintptr_t)tables[12];
    a.sums = (double *)(uintptr_t)tables[13];
    a.images = sizes[0], a.lines = sizes[1], a.heads = sizes[2], a.length = sizes[3];
    a.dk = sizes[4], a.dv = sizes[5], a.win = sizes[6];
    if (a.images < 1 || a.lines < 1 || a.heads < 1 || a.length < 1 || a.dk < 1 || a.dv < 1 || a.win < 1 ||
        a.win > a.length || first < 0 || last > task_count(&a) || first > last || mode < ATTEND ||
        mode > NORM_SUMS) {
        PyErr_Format(PyExc_ValueError, "tasks [%lld, %lld) of %lld, or bad sizes", first, last,
                     (long long)task_count(&a));
        return NULL;
    }
    if (!cpu_ok()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU lacks AVX2/FMA");
        return NULL;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run(&a, first, last, mode);
    Py_END_ALLOW_THREADS
    if (status != 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *supported(PyObject *self, PyObject *noargs)
{
    (void)self, (void)noargs;
    return PyBool_FromLong(cpu_ok());
}

static PyMethodDef methods[] = {
    {"call", call, METH_VARARGS, "Fused axial attention, forward or backward (fused_train.py)."},
    {"supported", supported, METH_NOARGS, "Whether this CPU runs the kernel (AVX2 and FMA)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fused_train",
    "Fused axial attention with its backward pass, x86-64 CPUs with AVX2 (see fused_train.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__fused_train(void) { return PyModule_Create(&module); }
