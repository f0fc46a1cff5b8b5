/* kvtier.tiers.format._checksums: a raw payload's xxh3_64 and its segment checksums in one call
 * that gives the GIL up once (Python twin: payload_checksums in checksum.py, same values).
 *
 * Why native: a block of 8 layers x 2 x 8 KV heads has 128 segments; through python-xxhash that
 * is 128 calls, each holding the GIL, and the payload's own checksum on top (together about 60 us
 * of a 256 KiB put's Python on this project's 2-core machine), while other I/O threads wait.
 * xxHash itself: third_party/xxhash/xxhash.h (the version python-xxhash 4.1 bundles, BSD-2-Clause).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define XXH_INLINE_ALL
#include "xxhash/xxhash.h"

PyDoc_STRVAR(payload_checksums_doc,
"payload_checksums(payload, segment_len) -> (checksum, segments)\n--\n\n"
"xxh3_64 of the whole payload, and of each `segment_len`-byte run of it (the last may be shorter),\n"
"packed little-endian u64 in order: the header's payload checksum and segment table.");

static PyObject *payload_checksums(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer payload;
    Py_ssize_t segment_len;
    if (!PyArg_ParseTuple(args, "y*n:payload_checksums", &payload, &segment_len)) return NULL;
    if (segment_len <= 0) {
        PyBuffer_Release(&payload);
        return PyErr_Format(PyExc_ValueError, "segment_len must be > 0, got %zd", segment_len);
    }
    Py_ssize_t count = (payload.len + segment_len - 1) / segment_len;
    PyObject *segments = PyBytes_FromStringAndSize(NULL, count * 8);
    if (segments == NULL) {
        PyBuffer_Release(&payload);
        return NULL;
    }
    unsigned char *table = (unsigned char *)PyBytes_AS_STRING(segments);
    const char *buf = payload.buf;
    unsigned long long whole;
    Py_BEGIN_ALLOW_THREADS
    XXH3_state_t state;  /* NOTE: the whole payload's hash takes each segment right after it, still in L1 */
    XXH3_INITSTATE(&state);
    XXH3_64bits_reset(&state);
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_ssize_t at = i * segment_len, len = payload.len - at < segment_len ? payload.len - at : segment_len;
        unsigned long long value = (unsigned long long)XXH3_64bits(buf + at, (size_t)len);
        for (int b = 0; b < 8; b++) table[8 * i + b] = (unsigned char)(value >> (8 * b));
        XXH3_64bits_update(&state, buf + at, (size_t)len);
    }
    whole = (unsigned long long)XXH3_64bits_digest(&state);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&payload);
    return Py_BuildValue("(KN)", whole, segments);
}

static PyMethodDef checksums_methods[] = {
    {"payload_checksums", payload_checksums, METH_VARARGS, payload_checksums_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef checksums_module = {
    PyModuleDef_HEAD_INIT, "kvtier.tiers.format._checksums",
    "A raw payload's checksums in one GIL-free call; see checksum.py.", -1, checksums_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__checksums(void) { return PyModule_Create(&checksums_module); }
