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

typedef struct {
    Py_ssize_t tasks, length, dk, dv, win;
    const float *q1, *k, *q2, *k3, *v;   /* packed [tasks][d][L][8] */
    const float *rq, *rk, *rv;           /* [dk][T], [dk][T], [dv][T] */
    const int32_t *lo, *hi;              /* [L] each, or NULL: every query sees every key */
    float *w;                            /* [tasks][L][win][8] */
    float *sv, *sve;                     /* forward: [tasks][dv][L][8]; backward: their grads */
    float *gq1, *gk, *gq2, *gk3, *gv;    /* backward: packed like the inputs */
    float *gr;                           /* backward: += the tables' gradients [2 dk + dv][T] */
} Args;

#ifdef FUSED_X86

static inline void window(const Args *a, Py_ssize_t o, Py_ssize_t *lo, Py_ssize_t *hi)
{
    *lo = a->lo == NULL ? 0 : a->lo[o];
    *hi = a->lo == NULL ? a->length : a->hi[o];
}

/* The forward pass of task t: W and both outputs. */
static TARGET void forward_task(const Args *a, Py_ssize_t t)
{
    const Py_ssize_t L = a->length, dk = a->dk, dv = a->dv, T = 2 * L + 1, win = a->win;
    const v8f *q1 = (const v8f *)a->q1 + t * dk * L, *k = (const v8f *)a->k + t * dk * L;
    const v8f *q2 = (const v8f *)a->q2 + t * dk * L, *k3 = (const v8f *)a->k3 + t * dk * L;
    const v8f *v = (const v8f *)a->v + t * dv * L;
    v8f *w = (v8f *)a->w + t * L * win;
    v8f *sv = (v8f *)a->sv + t * dv * L, *sve = (v8f *)a->sve + t * dv * L;
    for (Py_ssize_t o = 0; o < L; o++) {
        Py_ssize_t lo, hi;
        window(a, o, &lo, &hi);
        v8f *row = w + o * win - lo; /* row[p], lo <= p < hi */
        const float *rq = a->rq + L - o, *rk = a->rk + L - o; /* rq[c T + p]: distance p - o */
        Py_ssize_t p = lo;
        for (; p + 4 <= hi; p += 4) {
            v8f acc[4] = {{0}};
            for (Py_ssize_t c = 0; c < dk; c++) {
                const v8f x = q1[c * L + o], y = q2[c * L + o];
                const v8f *kc = k + c * L + p, *k3c = k3 + c * L + p;
                const float *r = rq + c * T + p, *s = rk + c * T + p;
                for (int j = 0; j < 4; j++) acc[j] += x * kc[j] + y * r[j] + k3c[j] * s[j];
            }
            for (int j = 0; j < 4; j++) row[p + j] = acc[j];
        }
        for (; p < hi; p++) {
            v8f acc = {0};
            for (Py_ssize_t c = 0; c < dk; c++)
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
        for (Py_ssize_t c = 0; c < dv; c++) {
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
}

static inline TARGET float lane_sum(v8f x)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128((__m256)x), _mm256_extractf128_ps((__m256)x, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* The backward pass of task t. work: (2 dk + dv) T + 2 L vectors. */
static TARGET void backward_task(const Args *a, Py_ssize_t t, v8f *work)
{
    const Py_ssize_t L = a->length, dk = a->dk, dv = a->dv, T = 2 * L + 1, win = a->win;
    const v8f *q1 = (const v8f *)a->q1 + t * dk * L, *k = (const v8f *)a->k + t * dk * L;
    const v8f *q2 = (const v8f *)a->q2 + t * dk * L, *k3 = (const v8f *)a->k3 + t * dk * L;
    const v8f *v = (const v8f *)a->v + t * dv * L;
    const v8f *w = (const v8f *)a->w + t * L * win;
    const v8f *gsv = (const v8f *)a->sv + t * dv * L, *gsve = (const v8f *)a->sve + t * dv * L;
    v8f *gq1 = (v8f *)a->gq1 + t * dk * L, *gk = (v8f *)a->gk + t * dk * L;
    v8f *gq2 = (v8f *)a->gq2 + t * dk * L, *gk3 = (v8f *)a->gk3 + t * dk * L;
    v8f *gv = (v8f *)a->gv + t * dv * L;
    v8f *grq = work, *grk = grq + dk * T, *grv = grk + dk * T, *gw = grv + dv * T, *ga = gw + L;
    memset(work, 0, (size_t)((2 * dk + dv) * T) * sizeof(v8f));
    memset(gk, 0, (size_t)(dk * L) * sizeof(v8f));
    memset(gk3, 0, (size_t)(dk * L) * sizeof(v8f));
    memset(gv, 0, (size_t)(dv * L) * sizeof(v8f));
    for (Py_ssize_t o = 0; o < L; o++) {
        Py_ssize_t lo, hi, p;
        window(a, o, &lo, &hi);
        const v8f *row = w + o * win - lo;
        const float *rq = a->rq + L - o, *rk = a->rk + L - o, *rv = a->rv + L - o;
        v8f *grq_o = grq + L - o, *grk_o = grk + L - o, *grv_o = grv + L - o;
        /* gW, and the values' gradients. */
        for (p = lo; p < hi; p++) gw[p] = (v8f){0};
        for (Py_ssize_t c = 0; c < dv; c++) {
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
        for (Py_ssize_t c = 0; c < dk; c++) {
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
    for (Py_ssize_t i = 0; i < (2 * dk + dv) * T; i++) a->gr[i] += lane_sum(work[i]);
}

static int run(const Args *a, Py_ssize_t first, Py_ssize_t last, int backward)
{
    if (!backward) {
        for (Py_ssize_t t = first; t < last; t++) forward_task(a, t);
        return 0;
    }
    const Py_ssize_t T = 2 * a->length + 1;
    v8f *work = aligned_alloc(32, (size_t)((2 * a->dk + a->dv) * T + 2 * a->length) * sizeof(v8f));
    if (work == NULL) return -1;
    for (Py_ssize_t t = first; t < last; t++) backward_task(a, t, work);
    free(work);
    return 0;
}
#else
static int run(const Args *a, Py_ssize_t first, Py_ssize_t last, int backward)
{
    (void)a, (void)first, (void)last, (void)backward;
    return -2;
}
#endif

static float *fptr(unsigned long long address) { return (float *)(uintptr_t)address; }

/* call(pointers, sizes, first, last, backward): see fused_train.py for the order of both tuples. */
static PyObject *call(PyObject *self, PyObject *args)
{
    (void)self;
    unsigned long long p[19];
    Py_ssize_t size[5], first, last;
    int backward;
    if (!PyArg_ParseTuple(args, "(KKKKKKKKKKKKKKKKKKK)(nnnnn)nnp", &p[0], &p[1], &p[2], &p[3],
                          &p[4], &p[5], &p[6], &p[7], &p[8], &p[9], &p[10], &p[11], &p[12],
                          &p[13], &p[14], &p[15], &p[16], &p[17], &p[18], &size[0],
                          &size[1], &size[2], &size[3], &size[4], &first, &last, &backward))
        return NULL;
    Args a = {
        .tasks = size[0], .length = size[1], .dk = size[2], .dv = size[3], .win = size[4],
        .q1 = fptr(p[0]), .k = fptr(p[1]), .q2 = fptr(p[2]), .k3 = fptr(p[3]), .v = fptr(p[4]),
        .rq = fptr(p[5]), .rk = fptr(p[6]), .rv = fptr(p[7]),
        .lo = (const int32_t *)(uintptr_t)p[8], .hi = (const int32_t *)(uintptr_t)p[9],
        .w = fptr(p[10]), .sv = fptr(p[11]), .sve = fptr(p[12]),
        .gq1 = fptr(p[13]), .gk = fptr(p[14]), .gq2 = fptr(p[15]), .gk3 = fptr(p[16]),
        .gv = fptr(p[17]), .gr = fptr(p[18]),
    };
    if (first < 0 || last > a.tasks || first > last || a.length < 1 || a.dk < 1 || a.dv < 1 ||
        a.win < 1 || a.win > a.length) {
        PyErr_Format(PyExc_ValueError, "tasks [%zd, %zd) outside [0, %zd), or bad sizes", first,
                     last, a.tasks);
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
