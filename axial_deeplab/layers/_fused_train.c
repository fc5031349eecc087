/* Position-sensitive axial attention with its backward pass, on x86-64 CPUs with AVX2 and FMA
 * (the compiled half of axial_deeplab/layers/fused_train.py, which packs the operands, checks
 * every size and falls back to the PyTorch path where this module is missing or the CPU lacks
 * AVX2).
 *
 * Operands are packed 8 lines to a vector (the lines are the lanes, so a relative-table entry,
 * which depends only on the pair of positions, is one broadcast shared by 8 lines): a block
 * [d][L] of v8f per (group of 8 lines, head), blocks in (group, head) order. With d = p - o the
 * key position minus the query position and T = 2L + 1 entries per table row, entry d + L:
 *
 *     A[o, p] = q1_o . k_p + q2_o . RQ[d] + k3_p . RK[d]       keys lo[o] <= p < hi[o]
 *     W[o, :] = softmax(A[o, :])
 *     sv[o] = sum_p W[o, p] v_p,   sve[o] = sum_p W[o, p] RV[d]
 *
 * The forward pass keeps W (row o holds keys lo[o].. at offsets 0..; rows `win` apart). The
 * backward pass, for the gradients gsv, gsve of the two outputs:
 *
 *     gW[o, p] = gsv_o . v_p + gsve_o . RV[d],   gA = W (gW - sum_p W gW)
 *     gq1_o = sum_p gA k_p,  gq2_o = sum_p gA RQ[d],  gk_p = sum_o gA q1_o,  gk3_p = sum_o gA RK[d]
 *     gv_p = sum_o W gsv_o,  gRQ[d] = sum gA q2_o,  gRK[d] = sum gA k3_p,  gRV[d] = sum W gsve_o
 *
 * The table gradients sum over the lanes too: each task accumulates them per lane and adds the
 * lane sums to the caller's float buffer, one buffer per concurrent call.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_fused_simd.h"

/* A float tensor read or written as element (line b, head h, channel c, position p) at
 * base + b s_b + h s_g + c s_c + p s_p. */
typedef struct {
    float *base;
    int64_t s_b, s_g, s_c, s_p;
} Operand;

enum { Q1, K, Q2, K3, V, SV, SVE, GQ1, GK, GQ2, GK3, GV, OPERANDS };

/* The call's descriptor, an int64 array (fused_train.py writes it): OPERANDS x (address, s_b,
 * s_g, s_c, s_p), then the addresses of rq, rk, rv, lo, hi, w, gr, then lines, heads, L, dk, dv,
 * win. SV and SVE are the outputs in the forward pass and their gradients in the backward pass;
 * GQ1 .. GV are written by the backward pass only. */
enum { D_TABLES = 5 * OPERANDS, D_SIZES = D_TABLES + 7, D_LENGTH = D_SIZES + 6 };

typedef struct {
    Operand x[OPERANDS];
    const float *rq, *rk, *rv;  /* [dk][T], [dk][T], [dv][T] */
    const int32_t *lo, *hi;     /* [L] each, or NULL: every query sees every key */
    float *w;                   /* [tasks][L][win][8] */
    float *gr;                  /* backward: += the tables' gradients [2 dk + dv][T] */
    int64_t lines, heads, length, dk, dv, win;
} Args;

/* Tasks: every (group of 8 lines, head), task t = group * heads + head. */
static int64_t task_count(const Args *a) { return (a->lines + 7) / 8 * a->heads; }

#ifdef FUSED_X86

static inline void window(const Args *a, int64_t o, int64_t *lo, int64_t *hi)
{
    *lo = a->lo == NULL ? 0 : a->lo[o];
    *hi = a->lo == NULL ? a->length : a->hi[o];
}

/* dst[c L + p] = channel c < d of head h at position p of operand x, for the task's lanes (lines
 * 8 group + i, i < count; missing lanes zero). Lines 8 apart in memory are read 8 x 8 at a time
 * and transposed where positions or channels are contiguous, else one float at a time. */
static TARGET void gather(const Operand *x, int64_t group, int count, int64_t h, int64_t d,
                          int64_t L, v8f *dst)
{
    const float *src = x->base + 8 * group * x->s_b + h * x->s_g;
    const int64_t sb = x->s_b, sc = x->s_c, sp = x->s_p;
    if (count == 8 && sb == 1) {
        for (int64_t c = 0; c < d; c++)
            for (int64_t p = 0; p < L; p++) memcpy(&dst[c * L + p], src + c * sc + p * sp, 32);
        return;
    }
    int64_t c_done = 0, p_done = 0; /* what the transposing loops covered */
    __m256 r[8], t[8];
    if (count == 8 && sp == 1) {
        p_done = L / 8 * 8, c_done = d;
        for (int64_t c = 0; c < d; c++)
            for (int64_t p = 0; p < p_done; p += 8) {
                for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * sb + c * sc + p);
                transpose8(r, t);
                for (int j = 0; j < 8; j++) dst[c * L + p + j] = (v8f)t[j];
            }
    } else if (count == 8 && sc == 1) {
        c_done = d / 8 * 8, p_done = L;
        for (int64_t p = 0; p < L; p++)
            for (int64_t c = 0; c < c_done; c += 8) {
                for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + i * sb + c + p * sp);
                transpose8(r, t);
                for (int j = 0; j < 8; j++) dst[(c + j) * L + p] = (v8f)t[j];
            }
    }
    for (int64_t c = 0; c < d; c++)
        for (int64_t p = c < c_done ? p_done : 0; p < L; p++) {
            v8f y = {0};
            for (int i = 0; i < count; i++) y[i] = src[i * sb + c * sc + p * sp];
            dst[c * L + p] = y;
        }
}

/* The inverse of gather: channel c < d of head h at position p of operand x from src[c L + p],
 * for the task's lanes. */
static TARGET void scatter(const Operand *x, int64_t group, int count, int64_t h, int64_t d,
                           int64_t L, const v8f *src)
{
    float *dst = x->base + 8 * group * x->s_b + h * x->s_g;
    const int64_t sb = x->s_b, sc = x->s_c, sp = x->s_p;
    if (count == 8 && sb == 1) {
        for (int64_t c = 0; c < d; c++)
            for (int64_t p = 0; p < L; p++) memcpy(dst + c * sc + p * sp, &src[c * L + p], 32);
        return;
    }
    int64_t c_done = 0, p_done = 0;
    __m256 r[8], t[8];
    if (count == 8 && sp == 1) {
        p_done = L / 8 * 8, c_done = d;
        for (int64_t c = 0; c < d; c++)
            for (int64_t p = 0; p < p_done; p += 8) {
                for (int j = 0; j < 8; j++) r[j] = (__m256)src[c * L + p + j];
                transpose8(r, t);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + i * sb + c * sc + p, t[i]);
            }
    } else if (count == 8 && sc == 1) {
        c_done = d / 8 * 8, p_done = L;
        for (int64_t p = 0; p < L; p++)
            for (int64_t c = 0; c < c_done; c += 8) {
                for (int j = 0; j < 8; j++) r[j] = (__m256)src[(c + j) * L + p];
                transpose8(r, t);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + i * sb + c + p * sp, t[i]);
            }
    }
    for (int64_t c = 0; c < d; c++)
        for (int64_t p = c < c_done ? p_done : 0; p < L; p++)
            for (int i = 0; i < count; i++) dst[i * sb + c * sc + p * sp] = src[c * L + p][i];
}

/* The task's group, head and lane count. */
static void task_lanes(const Args *a, int64_t t, int64_t *group, int64_t *h, int *count)
{
    *group = t / a->heads, *h = t % a->heads;
    const int64_t left = a->lines - 8 * *group;
    *count = left < 8 ? (int)left : 8;
}

/* The forward pass of task t: W and both outputs. work: (4 dk + 3 dv) L vectors. */
static TARGET void forward_task(const Args *a, int64_t t, v8f *work)
{
    const int64_t L = a->length, dk = a->dk, dv = a->dv, T = 2 * L + 1, win = a->win;
    int64_t group, h;
    int count;
    task_lanes(a, t, &group, &h, &count);
    v8f *q1 = work, *k = q1 + dk * L, *q2 = k + dk * L, *k3 = q2 + dk * L, *v = k3 + dk * L;
    v8f *sv = v + dv * L, *sve = sv + dv * L;
    gather(&a->x[Q1], group, count, h, dk, L, q1);
    gather(&a->x[K], group, count, h, dk, L, k);
    gather(&a->x[Q2], group, count, h, dk, L, q2);
    gather(&a->x[K3], group, count, h, dk, L, k3);
    gather(&a->x[V], group, count, h, dv, L, v);
    v8f *w = (v8f *)a->w + t * L * win;
    for (int64_t o = 0; o < L; o++) {
        int64_t lo, hi;
        window(a, o, &lo, &hi);
        v8f *row = w + o * win - lo; /* row[p], lo <= p < hi */
        const float *rq = a->rq + L - o, *rk = a->rk + L - o; /* rq[c T + p]: distance p - o */
        int64_t p = lo;
        for (; p + 4 <= hi; p += 4) {
            v8f acc[4] = {{0}};
            for (int64_t c = 0; c < dk; c++) {
                const v8f x = q1[c * L + o], y = q2[c * L + o];
                const v8f *kc = k + c * L + p, *k3c = k3 + c * L + p;
                const float *r = rq + c * T + p, *s = rk + c * T + p;
                for (int j = 0; j < 4; j++) acc[j] += x * kc[j] + y * r[j] + k3c[j] * s[j];
            }
            for (int j = 0; j < 4; j++) row[p + j] = acc[j];
        }
        for (; p < hi; p++) {
            v8f acc = {0};
            for (int64_t c = 0; c < dk; c++)
                acc += q1[c * L + o] * k[c * L + p] + q2[c * L + o] * rq[c * T + p] +
                       k3[c * L + p] * rk[c * T + p];
            row[p] = acc;
        }
        v8f top = row[lo], sum = {0};
        for (p = lo + 1; p < hi; p++) top = (v8f)_mm256_max_ps((__m256)row[p], (__m256)top);
        for (p = lo; p < hi; p++) {
            row[p] = exp8(row[p] - top);
            sum += row[p];
        }
        const v8f z = 1.0f / sum;
        for (p = lo; p < hi; p++) row[p] *= z;
        const float *rv = a->rv + L - o;
        for (int64_t c = 0; c < dv; c++) {
            const v8f *vc = v + c * L;
            const float *r = rv + c * T;
            v8f acc0 = {0}, acc1 = {0};
            for (p = lo; p < hi; p++) {
                acc0 += row[p] * vc[p];
                acc1 += row[p] * r[p];
            }
            sv[c * L + o] = acc0;
            sve[c * L + o] = acc1;
        }
    }
    scatter(&a->x[SV], group, count, h, dv, L, sv);
    scatter(&a->x[SVE], group, count, h, dv, L, sve);
}

static inline TARGET float lane_sum(v8f x)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128((__m256)x), _mm256_extractf128_ps((__m256)x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The backward pass of task t. work: (8 dk + 4 dv) L + (2 dk + dv) T + 2 L vectors. */
static TARGET void backward_task(const Args *a, int64_t t, v8f *work)
{
    const int64_t L = a->length, dk = a->dk, dv = a->dv, T = 2 * L + 1, win = a->win;
    int64_t group, h;
    int count;
    task_lanes(a, t, &group, &h, &count);
    v8f *q1 = work, *k = q1 + dk * L, *q2 = k + dk * L, *k3 = q2 + dk * L, *v = k3 + dk * L;
    v8f *gsv = v + dv * L, *gsve = gsv + dv * L;
    v8f *gq1 = gsve + dv * L, *gk = gq1 + dk * L, *gq2 = gk + dk * L, *gk3 = gq2 + dk * L;
    v8f *gv = gk3 + dk * L, *grq = gv + dv * L, *grk = grq + dk * T, *grv = grk + dk * T;
    v8f *gw = grv + dv * T, *ga = gw + L;
    gather(&a->x[Q1], group, count, h, dk, L, q1);
    gather(&a->x[K], group, count, h, dk, L, k);
    gather(&a->x[Q2], group, count, h, dk, L, q2);
    gather(&a->x[K3], group, count, h, dk, L, k3);
    gather(&a->x[V], group, count, h, dv, L, v);
    gather(&a->x[SV], group, count, h, dv, L, gsv);
    gather(&a->x[SVE], group, count, h, dv, L, gsve);
    memset(gk, 0, (size_t)(dk * L) * sizeof(v8f));
    memset(gk3, 0, (size_t)(dk * L) * sizeof(v8f));
    memset(gv, 0, (size_t)(dv * L + (2 * dk + dv) * T) * sizeof(v8f)); /* gv and the tables' */
    const v8f *w = (const v8f *)a->w + t * L * win;
    for (int64_t o = 0; o < L; o++) {
        int64_t lo, hi, p;
        window(a, o, &lo, &hi);
        const v8f *row = w + o * win - lo;
        const float *rq = a->rq + L - o, *rk = a->rk + L - o, *rv = a->rv + L - o;
        v8f *grq_o = grq + L - o, *grk_o = grk + L - o, *grv_o = grv + L - o;
        /* gW, and the values' gradients. */
        for (p = lo; p < hi; p++) gw[p] = (v8f){0};
        for (int64_t c = 0; c < dv; c++) {
            const v8f x = gsv[c * L + o], y = gsve[c * L + o];
            const v8f *vc = v + c * L;
            const float *r = rv + c * T;
            v8f *gvc = gv + c * L, *grvc = grv_o + c * T;
            for (p = lo; p < hi; p++) {
                gw[p] += x * vc[p] + y * r[p];
                gvc[p] += row[p] * x;
                grvc[p] += row[p] * y;
            }
        }
        /* Through the softmax. */
        v8f dot = {0};
        for (p = lo; p < hi; p++) dot += row[p] * gw[p];
        for (p = lo; p < hi; p++) ga[p] = row[p] * (gw[p] - dot);
        /* The logits' operands. */
        for (int64_t c = 0; c < dk; c++) {
            const v8f x = q1[c * L + o], y = q2[c * L + o];
            const v8f *kc = k + c * L, *k3c = k3 + c * L;
            const float *r = rq + c * T, *s = rk + c * T;
            v8f *gkc = gk + c * L, *gk3c = gk3 + c * L, *grqc = grq_o + c * T, *grkc = grk_o + c * T;
            v8f acc1 = {0}, acc2 = {0};
            for (p = lo; p < hi; p++) {
                const v8f g = ga[p];
                acc1 += g * kc[p];
                acc2 += g * r[p];
                gkc[p] += g * x;
                gk3c[p] += g * s[p];
                grqc[p] += g * y;
                grkc[p] += g * k3c[p];
            }
            gq1[c * L + o] = acc1;
            gq2[c * L + o] = acc2;
        }
    }
    scatter(&a->x[GQ1], group, count, h, dk, L, gq1);
    scatter(&a->x[GK], group, count, h, dk, L, gk);
    scatter(&a->x[GQ2], group, count, h, dk, L, gq2);
    scatter(&a->x[GK3], group, count, h, dk, L, gk3);
    scatter(&a->x[GV], group, count, h, dv, L, gv);
    for (int64_t i = 0; i < (2 * dk + dv) * T; i++) a->gr[i] += lane_sum(grq[i]);
}

static int run(const Args *a, int64_t first, int64_t last, int backward)
{
    const int64_t L = a->length, dk = a->dk, dv = a->dv, T = 2 * L + 1;
    const int64_t vectors = backward ? (8 * dk + 4 * dv) * L + (2 * dk + dv) * T + 2 * L
                                     : (4 * dk + 3 * dv) * L;
    v8f *work = aligned_alloc(32, (size_t)vectors * sizeof(v8f));
    if (work == NULL) return -1;
    for (int64_t t = first; t < last; t++) {
        if (backward)
            backward_task(a, t, work);
        else
            forward_task(a, t, work);
    }
    free(work);
    return 0;
}
#else
static int run(const Args *a, int64_t first, int64_t last, int backward)
{
    (void)a, (void)first, (void)last, (void)backward;
    return -2;
}
#endif

/* call(descriptor, first, last, backward): tasks [first, last) of the call described by the
 * int64 array at address `descriptor` (see the enum above; fused_train.py checks it). */
static PyObject *call(PyObject *self, PyObject *args)
{
    (void)self;
    unsigned long long address;
    long long first, last;
    int backward;
    if (!PyArg_ParseTuple(args, "KLLp", &address, &first, &last, &backward)) return NULL;
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
    a.lines = sizes[0], a.heads = sizes[1], a.length = sizes[2];
    a.dk = sizes[3], a.dv = sizes[4], a.win = sizes[5];
    if (a.lines < 1 || a.heads < 1 || a.length < 1 || a.dk < 1 || a.dv < 1 || a.win < 1 ||
        a.win > a.length || first < 0 || last > task_count(&a) || first > last) {
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
    status = run(&a, first, last, backward);
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
