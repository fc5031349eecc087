/* Horizontal runs of a panoptic id map, straight from a PNG's inflated (filtered) rows.
 *
 * The compiled half of axial_deeplab/evaluation/runs.py: the PNG's chunks, CRCs, size bound and
 * zlib stream (with its Adler-32) are checked in Python before this runs, so this only undoes the
 * five PNG row filters (PNG spec, section 9) one row at a time and cuts each decoded row into
 * maximal runs of equal RGB (alpha ignored, as the COCO API's rgb2id does). Memory: the runs (at
 * most one per pixel), two dense rows and a row's non-zero stored pixels.
 *
 * Panoptic maps are piecewise constant, so a filtered row is mostly zeros:
 * - Sub, Up and Paeth rows (every row our writer and PIL write) are decoded from the runs of the
 *   row above and the row's non-zero stored pixels, found 64 bytes at a time (sparse_row), never
 *   pixel by pixel;
 * - None and Average rows are decoded pixel by pixel (the row above made dense from its runs),
 *   then cut into runs where a pixel's bytes differ from its left neighbour's, 8 bytes at a time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(_MSC_VER)
#include <intrin.h>
#endif

typedef struct {
    int64_t *starts;  /* [count] flat pixel index of each run's first pixel */
    int64_t *values;  /* [count] its id, R + 256 G + 256^2 B */
    Py_ssize_t count, capacity;
} RunList;

static inline int64_t pixel_id(const uint8_t *pixel)
{
    return pixel[0] | pixel[1] << 8 | (int64_t)pixel[2] << 16;
}

static int push_run(RunList *runs, int64_t start, int64_t value)
{
    if (runs->count == runs->capacity) {
        Py_ssize_t capacity = runs->capacity * 2;
        int64_t *starts = realloc(runs->starts, capacity * sizeof(int64_t));
        if (starts == NULL) return -1;
        runs->starts = starts;
        int64_t *values = realloc(runs->values, capacity * sizeof(int64_t));
        if (values == NULL) return -1;
        runs->values = values;
        runs->capacity = capacity;
    }
    runs->starts[runs->count] = start;
    runs->values[runs->count] = value;
    runs->count++;
    return 0;
}

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "little-endian machines only (the byte order of 8-byte loads); pip falls back to numpy"
#endif

/* The index of the lowest set bit of a non-zero word (its lowest non-zero byte: the first in
 * memory on a little-endian machine, where the 8-byte loads below read byte 0 as the low byte). */
static inline int lowest_bit(uint64_t word)
{
#if defined(_MSC_VER)
    unsigned long bit;
    _BitScanForward64(&bit, word);
    return (int)bit;
#else
    return __builtin_ctzll(word);
#endif
}

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t word;
    memcpy(&word, p, sizeof word);
    return word;
}

static inline uint8_t paeth(int a, int b, int c)
{
    int pa = abs(b - c), pb = abs(a - c), pc = abs(a + b - 2 * c);
    return (uint8_t)(pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
}

/* Undo a None (0) or Average (3) row's filter: stored -> cur, given the row above, prev. cur has
 * bpp zero bytes before it, so the left neighbours of the first pixel read as 0. (Sub, Up and
 * Paeth rows go through sparse_row.) */
static void unfilter_dense(int filter, const uint8_t *stored, uint8_t *cur, const uint8_t *prev,
                           Py_ssize_t n, int bpp)
{
    if (filter == 0)
        memcpy(cur, stored, n);
    else
        for (Py_ssize_t i = 0; i < n; i++) cur[i] = stored[i] + ((cur[i - bpp] + prev[i]) >> 1);
}

/* The runs of one decoded row (n = W * bpp bytes, readable 8 bytes past its end), pixels
 * numbered from `first`. A run starts at pixel 0 and wherever one of a pixel's R, G, B bytes
 * differs from the byte bpp earlier. */
static int row_runs(RunList *runs, const uint8_t *cur, Py_ssize_t n, int bpp, int64_t first)
{
    if (push_run(runs, first, pixel_id(cur))) return -1;
    Py_ssize_t last = 0;  /* the last pixel that starts a run */
    for (Py_ssize_t i = bpp; i < n; i += 8) {
        uint64_t diff = load64(cur + i) ^ load64(cur + i - bpp);
        while (diff) {
            Py_ssize_t byte = i + (lowest_bit(diff) >> 3);
            diff &= diff - 1;
            if (byte >= n) break;
            Py_ssize_t pixel = byte / bpp;
            if (pixel != last && byte - pixel * bpp < 3) {
                last = pixel;
                if (push_run(runs, first + pixel, pixel_id(cur + pixel * bpp))) return -1;
            }
        }
    }
    return 0;
}

/* R, G, B added byte by byte, each mod 256 (what the PNG filters do), on ids packed in 24 bits. */
static inline int64_t add_bytes(int64_t a, int64_t b)
{
    return ((a & 0x7F7F7F) + (b & 0x7F7F7F)) ^ ((a ^ b) & 0x808080);
}

static inline int64_t paeth_bytes(int64_t a, int64_t b, int64_t c)
{
    int64_t out = 0;
    for (int shift = 0; shift < 24; shift += 8)
        out |= (int64_t)paeth(a >> shift & 0xFF, b >> shift & 0xFF, c >> shift & 0xFF) << shift;
    return out;
}

static inline int zero_block(const uint8_t *p)  /* 64 bytes (vectorized by the compiler) */
{
    uint64_t any = 0;
    for (int k = 0; k < 64; k += 8) any |= load64(p + k);
    return any == 0;
}

/* The pixels of a stored row (n = W * bpp bytes) with a non-zero R, G or B byte: their indices
 * and their stored R, G, B packed as ids; returns how many. Rows are mostly zeros: skipped 64
 * bytes at a time. */
static Py_ssize_t nonzero_pixels(const uint8_t *stored, Py_ssize_t n, int bpp, Py_ssize_t *where,
                                 int64_t *what)
{
    Py_ssize_t count = 0, last = -1;
    for (Py_ssize_t block = 0; block < n; block += 64) {
        Py_ssize_t end = block + 64 < n ? block + 64 : n;
        if (end - block == 64 && zero_block(stored + block)) continue;
        for (Py_ssize_t i = block; i < end; i += 8) {
            uint64_t word = 0;
            if (i + 8 <= end)
                word = load64(stored + i);
            else  /* the row's last bytes: no 8-byte load past them (the last row's end the data) */
                for (Py_ssize_t b = i; b < end; b++) word |= (uint64_t)stored[b] << 8 * (b - i);
            while (word) {
                Py_ssize_t byte = i + (lowest_bit(word) >> 3);
                word &= word - 1;
                Py_ssize_t pixel = byte / bpp;
                if (pixel != last && byte - pixel * bpp < 3) {
                    last = pixel;
                    where[count] = pixel;
                    what[count++] = pixel_id(stored + pixel * bpp);
                }
            }
        }
    }
    return count;
}

/* Scratch space of one image: the non-zero stored pixels of a row, and a dense row (two rows
 * with bpp zero bytes before each and 8 after) for the rows that need a per-pixel decode. */
typedef struct {
    Py_ssize_t *where;
    int64_t *what;
    uint8_t *dense;
} Scratch;

/* Runs of a Sub (1), Up (2) or Paeth (4) row, pixels numbered from `first`, from the runs of the
 * row above (runs [above_first, above_first + above_count), flat starts relative to `above`, that
 * row's first pixel) and the row's `nonzero` non-zero stored pixels (where, what).
 * Between two "events" the decoded pixel cannot change: a run of the row above continues and the
 * stored pixels are zero, so Sub and Paeth (above == above-left: Paeth picks the left pixel)
 * repeat the left pixel and Up repeats the pixel above, which is also the left pixel's unless the
 * left pixel was stored non-zero. Events: pixel 0, non-zero stored pixels, and for Up and Paeth
 * the starts of runs above, and for Up the pixel after a non-zero stored pixel. */
static int sparse_row(RunList *runs, int filter, Py_ssize_t width, int64_t first,
                      Py_ssize_t above_first, Py_ssize_t above_count, int64_t above,
                      const Py_ssize_t *where, const int64_t *what, Py_ssize_t nonzero)
{
    Py_ssize_t k = 0, j = 0;  /* next non-zero stored pixel; run above covering the event */
    int64_t left = 0;
    Py_ssize_t x = 0;
    while (x < width) {
        int64_t stored = 0;
        if (k < nonzero && where[k] == x) stored = what[k++];
        while (j + 1 < above_count && runs->starts[above_first + j + 1] - above <= x) j++;
        int64_t up = runs->values[above_first + j];
        int64_t value;
        if (filter == 1)
            value = add_bytes(left, stored);
        else if (filter == 2)
            value = add_bytes(up, stored);
        else {
            int64_t upper_left = x == 0 ? 0
                : runs->starts[above_first + j] - above == x ? runs->values[above_first + j - 1]
                : up;
            value = add_bytes(paeth_bytes(left, up, upper_left), stored);
        }
        if (x == 0 || value != left) {
            if (push_run(runs, first + x, value)) return -1;
            left = value;
        }
        Py_ssize_t after = filter == 2 && stored ? x + 1 : -1;  /* Up: the pixel after this one */
        /* the next event */
        Py_ssize_t next = k < nonzero ? where[k] : width;
        if (filter != 1) {
            if (j + 1 < above_count) {
                Py_ssize_t start = runs->starts[above_first + j + 1] - above;
                if (start < next) next = start;
            }
            if (after >= 0 && after < next) next = after;
        }
        x = next;
    }
    return 0;
}

/* Write the runs [previous, previous + count) (flat starts relative to `first`) as a dense row. */
static void fill_row(uint8_t *row, const RunList *runs, Py_ssize_t previous, Py_ssize_t count,
                     int64_t first, Py_ssize_t width, int bpp)
{
    for (Py_ssize_t k = 0; k < count; k++) {
        Py_ssize_t start = runs->starts[previous + k] - first;
        Py_ssize_t end = k + 1 < count ? runs->starts[previous + k + 1] - first : width;
        int64_t value = runs->values[previous + k];
        for (uint8_t *p = row + start * bpp; p < row + end * bpp; p += bpp)
            p[0] = value & 0xFF, p[1] = value >> 8 & 0xFF, p[2] = value >> 16 & 0xFF;
    }
}

/* Runs of every row: the sparse decode for Sub, Up and Paeth rows, a per-pixel decode for None
 * and Average rows. Returns 0, -1 for no memory, or 1 + the row whose filter type is invalid. The
 * runs start with one for row -1 (zeros, at flat pixel -W): "the row above" of row 0. */
static Py_ssize_t decode_runs(RunList *runs, const uint8_t *rows, Py_ssize_t height,
                              Py_ssize_t width, int bpp, Scratch *scratch)
{
    Py_ssize_t n = width * bpp, stride = bpp + n + 8;
    uint8_t *above_row = scratch->dense + bpp, *cur = scratch->dense + stride + bpp;
    if (push_run(runs, -width, 0)) return -1;
    Py_ssize_t above = 0, above_count = 1;  /* the runs of the row above */
    for (Py_ssize_t y = 0; y < height; y++) {
        const uint8_t *stored = rows + y * (n + 1) + 1;
        int filter = stored[-1];
        Py_ssize_t first = runs->count;
        if (filter == 1 || filter == 2 || filter == 4) {
            Py_ssize_t nonzero = nonzero_pixels(stored, n, bpp, scratch->where, scratch->what);
            if (sparse_row(runs, filter, width, y * width, above, above_count, (y - 1) * width,
                           scratch->where, scratch->what, nonzero))
                return -1;
        } else if (filter == 0 || filter == 3) {
            fill_row(above_row, runs, above, above_count, (y - 1) * width, width, bpp);
            unfilter_dense(filter, stored, cur, above_row, n, bpp);
            if (row_runs(runs, cur, n, bpp, y * width)) return -1;
        } else
            return 1 + y;
        above = first, above_count = runs->count - first;
    }
    return 0;
}

static PyObject *runs_from_rows(PyObject *self, PyObject *args)
{
    Py_buffer data;
    Py_ssize_t height, width, bpp;
    if (!PyArg_ParseTuple(args, "y*nnn", &data, &height, &width, &bpp)) return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = width * bpp;
    if ((bpp != 3 && bpp != 4) || height <= 0 || width <= 0 || n / bpp != width ||
        data.len / (n + 1) < height) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "rows do not hold height x width pixels of bpp bytes");
        return NULL;
    }
    RunList runs = {malloc(4096 * sizeof(int64_t)), malloc(4096 * sizeof(int64_t)), 0, 4096};
    Scratch scratch = {malloc(width * sizeof(Py_ssize_t)), malloc(width * sizeof(int64_t)),
                       calloc(2 * (bpp + n + 8), 1)};
    Py_ssize_t status = -1;
    if (runs.starts && runs.values && scratch.where && scratch.what && scratch.dense) {
        Py_BEGIN_ALLOW_THREADS
        status = decode_runs(&runs, data.buf, height, width, (int)bpp, &scratch);
        Py_END_ALLOW_THREADS
    }
    if (status < 0)
        PyErr_NoMemory();
    else if (status > 0) {
        const uint8_t *row = (const uint8_t *)data.buf + (status - 1) * (n + 1);
        PyErr_Format(PyExc_ValueError, "row %zd has filter type %d (PNG allows 0-4)", status - 1,
                     row[0]);
    } else {  /* leave out row -1's run */
        Py_ssize_t size = (runs.count - 1) * sizeof(int64_t);
        PyObject *starts = PyBytes_FromStringAndSize((char *)(runs.starts + 1), size);
        PyObject *values = PyBytes_FromStringAndSize((char *)(runs.values + 1), size);
        if (starts && values) result = PyTuple_Pack(2, starts, values);
        Py_XDECREF(starts);
        Py_XDECREF(values);
    }
    free(runs.starts);
    free(runs.values);
    free(scratch.where);
    free(scratch.what);
    free(scratch.dense);
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef methods[] = {
    {"runs_from_rows", runs_from_rows, METH_VARARGS,
     "runs_from_rows(rows, height, width, bpp) -> (starts, values)\n\n"
     "The horizontal runs of an 8-bit RGB (bpp 3) or RGBA (bpp 4) PNG's inflated rows (each a\n"
     "filter-type byte, then width * bpp bytes): two bytes objects of native int64, each run's\n"
     "first flat pixel index (row-major) and its id R + 256 G + 256^2 B. ValueError for a filter\n"
     "type above 4."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_png_runs",
    "Horizontal runs of panoptic id maps from PNG rows (see runs_from_rows).", -1, methods,
};

PyMODINIT_FUNC PyInit__png_runs(void) { return PyModule_Create(&module); }
