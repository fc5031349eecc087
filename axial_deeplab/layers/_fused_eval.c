/* Inference-time position-sensitive axial attention along one axis, fused, on x86-64 CPUs with
 * AVX2 and FMA (the compiled half of axial_deeplab/layers/fused_eval.py, which checks every
 * argument and falls back to the PyTorch path where this module is missing or the CPU lacks AVX2).
 *
 * Input: the q/k/v projection of a feature map, any strides, channels [q (G dk) | k (G dk) |
 * v (G dv)], the batch norm's scale folded in. For one head and 8 lines along the attended axis
 * at a time (lines of different images may share the 8; the lines are the 8 lanes of a vector, so a relative embedding,
 * which depends only on the pair of positions, is one broadcast shared by 8 lines), with
 * d = p - o the key position minus the query position:
 *
 *     q' = q + q_shift,  k' = k + k_shift
 *     A[o, p] = s0 q'_o . k'_p + q'_o . RQ[d] + k'_p . RK[d]      (RQ = s1 rq, RK = s2 rk)
 *     W[o, :] = softmax over the keys of query o, lo[o] <= p < hi[o]
 *     out[o] = sum_p W[o, p] (a v_p + RV[d]) + const              (RV = b rv)
 *
 * (k_shift in the first term adds s0 q'_o . k_shift to every key of query o: the softmax cancels
 * it.) Two queries are worked on together: their logits for 4 keys at a time are 8 accumulators
 * in registers, every load of a key's vector feeds 4-6 multiply-adds; their softmax weights
 * (2 x keys x 8 floats) stay in L1 for the two passes over the values. Nothing of size L x L
 * is stored. The exponential is a degree-6 polynomial after range reduction (relative error
 * about 2e-7).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "_fused_simd.h"

typedef struct {
    const float *qkv;  /* the projection, element (n, channel, position, line) at the strides: */
    Py_ssize_t s_n, s_c, s_p, s_l;
    float *out;        /* [N, G dv, positions, lines] at its strides */
    Py_ssize_t o_n, o_c, o_p, o_l;
    Py_ssize_t images, length, lines, heads, dk, dv;
    const float *q_shift, *k_shift;  /* [G dk] each */
    const float *s0;                 /* [G] */
    const float *rq, *rk;            /* [G, dk, 2L + 1], indexed by d + L (one zero each end) */
    const float *rv;                 /* [G, dv, 2L + 1] */
    const float *v_scale, *bias;     /* [G dv] each */
    const int32_t *lo, *hi;          /* [L] each, or NULL: every query sees every key */
} Args;

/* Tasks: every (group of 8 lines, head), task t = group * heads + head. */
static Py_ssize_t task_count(const Args *a)
{
    return (a->images * a->lines + 7) / 8 * a->heads;
}

#ifdef FUSED_X86
/* Where the 8 lines of a task lie: element offsets of each in the input and in the output (lines
 * of different images may share a task), and whether they are 8 consecutive floats. */
typedef struct {
    Py_ssize_t in[8], out[8];
    int count, in_dense, out_dense;
} Lanes;

static inline TARGET v8f load_lanes(const float *src, const Lanes *m)
{
    v8f x = {0};
    if (m->in_dense) {
        memcpy(&x, src + m->in[0], sizeof x);
    } else {
        for (int i = 0; i < m->count; i++) x[i] = src[m->in[i]];
    }
    return x;
}

static inline TARGET void store_lanes(float *dst, const Lanes *m, v8f x)
{
    if (m->out_dense) {
        memcpy(dst + m->out[0], &x, sizeof x);
    } else {
        for (int i = 0; i < m->count; i++) dst[m->out[i]] = x[i];
    }
}

/* dst[c Lp + o] = the 8 lines' values of channel ch0 + c at position o, c < count, o < L. Lines
 * 8 apart in memory are read 8 x 8 at a time and transposed when positions (s_p = 1) or
 * channels (s_c = 1) are the contiguous axis, else one float at a time. */
static TARGET void pack(const Args *a, const Lanes *m, Py_ssize_t ch0, Py_ssize_t count,
                        Py_ssize_t Lp, v8f *dst)
{
    const Py_ssize_t L = a->length;
    const float *src = a->qkv + ch0 * a->s_c;
    if (m->in_dense) {
        for (Py_ssize_t c = 0; c < count; c++)
            for (Py_ssize_t o = 0; o < L; o++)
                memcpy(&dst[c * Lp + o], src + c * a->s_c + o * a->s_p + m->in[0], sizeof(v8f));
        return;
    }
    Py_ssize_t c_done = 0, o_done = 0; /* what the transposing loops covered */
    __m256 r[8], t[8];
    if (m->count == 8 && a->s_p == 1) {
        o_done = L / 8 * 8;
        for (Py_ssize_t c = 0; c < count; c++)
            for (Py_ssize_t o = 0; o < o_done; o += 8) {
                for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + c * a->s_c + o + m->in[i]);
                transpose8(r, t);
                for (int j = 0; j < 8; j++) dst[c * Lp + o + j] = (v8f)t[j];
            }
        c_done = count;
    } else if (m->count == 8 && a->s_c == 1) {
        c_done = count / 8 * 8;
        for (Py_ssize_t o = 0; o < L; o++)
            for (Py_ssize_t c = 0; c < c_done; c += 8) {
                for (int i = 0; i < 8; i++) r[i] = _mm256_loadu_ps(src + c + o * a->s_p + m->in[i]);
                transpose8(r, t);
                for (int j = 0; j < 8; j++) dst[(c + j) * Lp + o] = (v8f)t[j];
            }
        o_done = L;
    }
    for (Py_ssize_t c = 0; c < count; c++) /* the rest, one float at a time */
        for (Py_ssize_t o = c < c_done ? o_done : 0; o < L; o++)
            dst[c * Lp + o] = load_lanes(src + c * a->s_c + o * a->s_p, m);
}

/* The inverse of pack for the output: out channel ch0 + c at position o of the 8 lines from
 * src[c Lp + o], c < count. */
static TARGET void unpack(const Args *a, const Lanes *m, Py_ssize_t ch0, Py_ssize_t count,
                          Py_ssize_t Lp, const v8f *src)
{
    const Py_ssize_t L = a->length;
    float *dst = a->out + ch0 * a->o_c;
    if (m->out_dense) {
        for (Py_ssize_t c = 0; c < count; c++)
            for (Py_ssize_t o = 0; o < L; o++)
                memcpy(dst + c * a->o_c + o * a->o_p + m->out[0], &src[c * Lp + o], sizeof(v8f));
        return;
    }
    Py_ssize_t c_done = 0, o_done = 0;
    __m256 r[8], t[8];
    if (m->count == 8 && a->o_p == 1) {
        o_done = L / 8 * 8;
        for (Py_ssize_t c = 0; c < count; c++)
            for (Py_ssize_t o = 0; o < o_done; o += 8) {
                for (int j = 0; j < 8; j++) r[j] = (__m256)src[c * Lp + o + j];
                transpose8(r, t);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + c * a->o_c + o + m->out[i], t[i]);
            }
        c_done = count;
    } else if (m->count == 8 && a->o_c == 1) {
        c_done = count / 8 * 8;
        for (Py_ssize_t o = 0; o < L; o++)
            for (Py_ssize_t c = 0; c < c_done; c += 8) {
                for (int j = 0; j < 8; j++) r[j] = (__m256)src[(c + j) * Lp + o];
                transpose8(r, t);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(dst + c + o * a->o_p + m->out[i], t[i]);
            }
        o_done = L;
    }
    for (Py_ssize_t c = 0; c < count; c++)
        for (Py_ssize_t o = c < c_done ? o_done : 0; o < L; o++)
            store_lanes(dst + c * a->o_c + o * a->o_p, m, src[c * Lp + o]);
}

/* One group of 8 lines (of all images' lines, in order) and one head. work: (3 dk + 2 dv + 2) Lp
 * + 4 vectors, 32-byte aligned, Lp = L rounded up to even. */
static TARGET void run_task(const Args *a, Py_ssize_t group, Py_ssize_t h, v8f *work)
{
    const Py_ssize_t L = a->length, Lp = L + (L & 1), dk = a->dk, dv = a->dv, T = 2 * L + 1;
    const Py_ssize_t total = a->images * a->lines;
    Lanes m;
    m.count = total - 8 * group < 8 ? (int)(total - 8 * group) : 8;
    for (int i = 0; i < m.count; i++) {
        const Py_ssize_t line = 8 * group + i, n = line / a->lines, l = line % a->lines;
        m.in[i] = n * a->s_n + l * a->s_l;
        m.out[i] = n * a->o_n + l * a->o_l;
    }
    m.in_dense = m.count == 8 && a->s_l == 1 && m.in[7] - m.in[0] == 7;
    m.out_dense = m.count == 8 && a->o_l == 1 && m.out[7] - m.out[0] == 7;
    v8f *qa = work, *qb = qa + dk * Lp, *kp = qb + dk * Lp, *vp = kp + dk * Lp;
    v8f *w0 = vp + dv * Lp + 1, *w1 = w0 + Lp + 2; /* a margin of one key each side */
    v8f *ob = w1 + Lp + 1;                           /* the outputs [dv][Lp] */
    const float s0 = a->s0[h];

    pack(a, &m, h * dk, dk, Lp, qb);
    pack(a, &m, a->heads * dk + h * dk, dk, Lp, kp);
    pack(a, &m, 2 * a->heads * dk + h * dv, dv, Lp, vp);
    for (Py_ssize_t c = 0; c < dk; c++) {
        const float q_shift = a->q_shift[h * dk + c], k_shift = a->k_shift[h * dk + c];
        for (Py_ssize_t o = 0; o < L; o++) {
            qb[c * Lp + o] += q_shift;
            qa[c * Lp + o] = qb[c * Lp + o] * s0;
            kp[c * Lp + o] += k_shift;
        }
        if (Lp > L) qa[c * Lp + L] = qb[c * Lp + L] = kp[c * Lp + L] = (v8f){0};
    }
    for (Py_ssize_t c = 0; c < dv; c++) {
        const float scale = a->v_scale[h * dv + c];
        for (Py_ssize_t p = 0; p < L; p++) vp[c * Lp + p] *= scale;
    }
    const float *rq = a->rq + h * dk * T + L, *rk = a->rk + h * dk * T + L;
    const float *rv = a->rv + h * dv * T + L;

    /* Queries o0 and o1 = o0 + 1; for an odd L the last o1 = L is a phantom (zero operands,
     * o0's keys, tables padded by one entry at each end), computed and not stored. */
    for (Py_ssize_t o0 = 0; o0 < L; o0 += 2) {
        const Py_ssize_t o1 = o0 + 1;
        Py_ssize_t lo0 = 0, hi0 = L, lo1 = 0, hi1 = L;
        if (a->lo != NULL) {
            lo0 = lo1 = a->lo[o0], hi0 = hi1 = a->hi[o0];
            if (o1 < L) lo1 = a->lo[o1], hi1 = a->hi[o1];
        }
        const Py_ssize_t p0 = lo0 < lo1 ? lo0 : lo1, p1 = hi0 > hi1 ? hi0 : hi1;
        /* Logits of both queries against keys [p0, p1), 4 keys at a time. The tables at
         * distance p - o1 are those at p - 1 - o0: 5 entries serve the 8 pairs. */
        Py_ssize_t p = p0;
        for (; p + 4 <= p1; p += 4) {
            v8f a0[4] = {{0}}, a1[4] = {{0}};
            for (Py_ssize_t c = 0; c < dk; c++) {
                const v8f x0 = qa[c * Lp + o0], x1 = qa[c * Lp + o1];
                const v8f y0 = qb[c * Lp + o0], y1 = qb[c * Lp + o1];
                const float *r = rq + c * T + p - o0, *s = rk + c * T + p - o0;
                const v8f *kc = kp + c * Lp + p;
                for (int j = 0; j < 4; j++) {
                    const v8f key = kc[j];
                    a0[j] += x0 * key + y0 * r[j] + key * s[j];
                    a1[j] += x1 * key + y1 * r[j - 1] + key * s[j - 1];
                }
            }
            for (int j = 0; j < 4; j++) w0[p + j] = a0[j], w1[p + j] = a1[j];
        }
        for (; p < p1; p++) {
            v8f a0 = {0}, a1 = {0};
            for (Py_ssize_t c = 0; c < dk; c++) {
                const v8f key = kp[c * Lp + p];
                const float *r = rq + c * T + p - o0, *s = rk + c * T + p - o0;
                a0 += qa[c * Lp + o0] * key + qb[c * Lp + o0] * r[0] + key * s[0];
                a1 += qa[c * Lp + o1] * key + qb[c * Lp + o1] * r[-1] + key * s[-1];
            }
            w0[p] = a0, w1[p] = a1;
        }
        const v8f z0 = softmax_row(w0, p0, p1, lo0, hi0);
        const v8f z1 = softmax_row(w1, p0, p1, lo1, hi1);
        w0[p0 - 1] = w1[p1] = (v8f){0};

        /* Values, 4 channels at a time. */
        for (Py_ssize_t c0 = 0; c0 < dv; c0 += 4) {
            const int width = dv - c0 < 4 ? (int)(dv - c0) : 4;
            v8f out0[4], out1[4];
            if (width == 4) {
                weigh_values(w0, w1, vp + c0 * Lp, Lp, p0, p1, out0, out1);
                weigh_table(w0, w1, rv + c0 * T - o0, T, p0, p1, out0, out1);
            } else {
                for (int j = 0; j < width; j++) {
                    const float *r = rv + (c0 + j) * T - o0;
                    v8f b0 = {0}, b1 = {0};
                    for (Py_ssize_t q = p0; q < p1; q++) {
                        const v8f u0 = w0[q], u1 = w1[q], value = vp[(c0 + j) * Lp + q];
                        b0 += u0 * value + u0 * r[q];
                        b1 += u1 * value + u1 * r[q - 1];
                    }
                    out0[j] = b0, out1[j] = b1;
                }
            }
            for (int j = 0; j < width; j++) {
                const float bias = a->bias[h * dv + c0 + j];
                ob[(c0 + j) * Lp + o0] = out0[j] * z0 + bias;
                ob[(c0 + j) * Lp + o1] = out1[j] * z1 + bias; /* (o1 = L: the padding) */
            }
        }
    }
    unpack(a, &m, h * dv, dv, Lp, ob);
}

static int run_tasks(const Args *a, Py_ssize_t first, Py_ssize_t last)
{
    const Py_ssize_t Lp = a->length + (a->length & 1);
    const size_t vectors = (size_t)((3 * a->dk + 2 * a->dv + 2) * Lp + 4);
    v8f *work = aligned_alloc(32, vectors * sizeof(v8f));
    if (work == NULL) return -1;
    for (Py_ssize_t t = first; t < last; t++) run_task(a, t / a->heads, t % a->heads, work);
    free(work);
    return 0;
}

#else
static int run_tasks(const Args *a, Py_ssize_t first, Py_ssize_t last)
{
    (void)a, (void)first, (void)last;
    return -2;
}
#endif

static const float *fptr(unsigned long long address) { return (const float *)(uintptr_t)address; }

/* attend(pointers, sizes, first, last): see fused_eval.py for the order of both tuples. */
static PyObject *attend(PyObject *self, PyObject *args)
{
    (void)self;
    unsigned long long ptr[12];
    Py_ssize_t size[14], first, last;
    if (!PyArg_ParseTuple(args, "(KKKKKKKKKKKK)(nnnnnnnnnnnnnn)nn", &ptr[0], &ptr[1], &ptr[2],
                          &ptr[3], &ptr[4], &ptr[5], &ptr[6], &ptr[7], &ptr[8], &ptr[9],
                          &ptr[10], &ptr[11], &size[0], &size[1], &size[2], &size[3],
                          &size[4], &size[5], &size[6], &size[7], &size[8], &size[9], &size[10],
                          &size[11], &size[12], &size[13], &first, &last))
        return NULL;
    Args a = {
        .qkv = fptr(ptr[0]), .out = (float *)(uintptr_t)ptr[1],
        .q_shift = fptr(ptr[2]), .k_shift = fptr(ptr[3]), .s0 = fptr(ptr[4]),
        .rq = fptr(ptr[5]), .rk = fptr(ptr[6]), .rv = fptr(ptr[7]),
        .v_scale = fptr(ptr[8]), .bias = fptr(ptr[9]),
        .lo = (const int32_t *)(uintptr_t)ptr[10], .hi = (const int32_t *)(uintptr_t)ptr[11],
        .s_n = size[0], .s_c = size[1], .s_p = size[2], .s_l = size[3],
        .o_n = size[4], .o_c = size[5], .o_p = size[6], .o_l = size[7],
        .images = size[8], .length = size[9], .lines = size[10], .heads = size[11],
        .dk = size[12], .dv = size[13],
    };
    const Py_ssize_t tasks = task_count(&a);
    if (first < 0 || last > tasks || first > last || a.length < 1 || a.dk < 1 || a.dv < 1) {
        PyErr_Format(PyExc_ValueError, "tasks [%zd, %zd) outside [0, %zd) or empty sizes", first,
                     last, tasks);
        return NULL;
    }
    if (!cpu_ok()) {
        PyErr_SetString(PyExc_RuntimeError, "this CPU lacks AVX2/FMA");
        return NULL;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run_tasks(&a, first, last);
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
    {"attend", attend, METH_VARARGS, "Fused inference axial attention (see fused_eval.py)."},
    {"supported", supported, METH_NOARGS, "Whether this CPU runs the kernel (AVX2 and FMA)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fused_eval",
    "Fused inference-time axial attention for x86-64 CPUs with AVX2 (see fused_eval.py).", -1,
    methods,
};

PyMODINIT_FUNC PyInit__fused_eval(void) { return PyModule_Create(&module); }
