/* kvtier.tiers.remote._resp: the remote tier's hot commands (GET into caller buffers, SET from
 * parts) as one call each that never holds the GIL while it waits or copies.
 *
 * Why native: through redis-py, a 256 KiB GET or SET cost the client a parser feed, a bytes
 * object and a copy, each under the GIL, and the tier ran at 0.2-0.3 of redis-benchmark on the
 * same server (README: the remote tier row). Here a reply's value goes straight from the socket
 * into the block's memory, and its payload's xxh3_64 is taken while those bytes are in the cache.
 *
 * The Python twin is pyresp.py: same names, signatures, replies and errors. Both speak RESP2 to a
 * plain TCP or unix socket (TLS stays with redis-py). A socket with a Python timeout is non-blocking,
 * so each wait is a poll() of at most that timeout; a blocking one (wire.py makes its connections so)
 * has its waits bounded by SO_RCVTIMEO/SO_SNDTIMEO, and a value then arrives in one
 * recvmsg(MSG_WAITALL) and a command leaves in one sendmsg, without a poll per segment.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define XXH_INLINE_ALL
#include "xxhash/xxhash.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif
#define READ_BUF 4096               /* what one receive takes beyond the bytes asked for: reply lines */
#define MAX_LINE 512                /* the longest reply line this client reads (an error's message) */
#define MAX_BULK (1LL << 31)        /* a bulk length above this is no reply of ours: a broken stream */
#define MAX_TARGET_PARTS 8

typedef struct {
    int fd;
    int timeout_ms;  /* -1: none */
    int blocking;    /* a blocking socket (SO_RCVTIMEO/SO_SNDTIMEO bound its waits): EAGAIN is a timeout */
    char buf[READ_BUF];
    size_t pos, end;
} Stream;

/* Drop `n` bytes from the front of the iovec array (*iov, *left): after a short send or receive. */
static void iov_consume(struct iovec **iov, int *left, size_t n) {
    while (*left > 0 && n >= (*iov)->iov_len) {
        n -= (*iov)->iov_len;
        (*iov)++;
        (*left)--;
    }
    if (*left > 0) {
        (*iov)->iov_base = (char *)(*iov)->iov_base + n;
        (*iov)->iov_len -= n;
    }
}

/* Wait until fd is ready for `events`: 0, ETIMEDOUT, or an errno. */
static int wait_ready(Stream *s, short events) {
    if (s->blocking) return ETIMEDOUT;  /* the kernel waited its SO_RCVTIMEO/SO_SNDTIMEO already */
    struct pollfd p = {.fd = s->fd, .events = events};
    for (;;) {
        int n = poll(&p, 1, s->timeout_ms);
        if (n > 0) return 0;
        if (n == 0) return ETIMEDOUT;
        if (errno != EINTR) return errno;
    }
}

static int send_iov(Stream *s, struct iovec *iov, int left) {
    while (left > 0) {
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)(left < IOV_MAX ? left : IOV_MAX)};
        ssize_t sent = sendmsg(s->fd, &msg, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                int err = wait_ready(s, POLLOUT);
                if (err) return err;
                continue;
            }
            return errno;
        }
        iov_consume(&iov, &left, (size_t)sent);
    }
    return 0;
}

/* One receive into iov (waiting when nothing is there yet): bytes received, or -errno. `flags`:
 * MSG_WAITALL where every byte asked for is due (a value): on a blocking socket the kernel then
 * fills the whole iov in one call, without a return to this loop per segment that arrives. */
static ssize_t recv_iov(Stream *s, struct iovec *iov, int count, int flags) {
    for (;;) {
        struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)count};
        ssize_t got = recvmsg(s->fd, &msg, flags);
        if (got > 0) return got;
        if (got == 0) return -ECONNRESET;  /* the server closed the connection */
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int err = wait_ready(s, POLLIN);
            if (err) return -err;
            continue;
        }
        return -errno;
    }
}

/* Fill iov exactly: bytes already buffered first, then straight from the socket. 0 or an errno. */
static int read_exact(Stream *s, struct iovec *iov, int left) {
    while (left > 0 && s->pos < s->end) {
        size_t take = s->end - s->pos < iov->iov_len ? s->end - s->pos : iov->iov_len;
        memcpy(iov->iov_base, s->buf + s->pos, take);
        s->pos += take;
        iov_consume(&iov, &left, take);
    }
    while (left > 0) {
        ssize_t got = recv_iov(s, iov, left < IOV_MAX ? left : IOV_MAX, MSG_WAITALL);
        if (got < 0) return (int)-got;
        iov_consume(&iov, &left, (size_t)got);
    }
    return 0;
}

/* Discard `n` bytes of the stream. 0 or an errno. */
static int skip(Stream *s, long long n) {
    char sink[READ_BUF];
    while (n > 0) {
        struct iovec iov = {.iov_base = sink, .iov_len = (size_t)(n < READ_BUF ? n : READ_BUF)};
        n -= (long long)iov.iov_len;
        int err = read_exact(s, &iov, 1);
        if (err) return err;
    }
    return 0;
}

/* The CRLF that ends a bulk value: 0, EPROTO (other bytes: the stream is out of step), or an errno. */
static int expect_crlf(Stream *s) {
    char end[2];
    struct iovec iov = {.iov_base = end, .iov_len = 2};
    int err = read_exact(s, &iov, 1);
    if (err) return err;
    return end[0] == '\r' && end[1] == '\n' ? 0 : EPROTO;
}

/* The next reply line (without CRLF) at *line, *len. 0, EPROTO (too long), or an errno. */
static int read_line(Stream *s, const char **line, size_t *len) {
    size_t scanned = s->pos;
    for (;;) {
        for (; scanned + 1 < s->end; scanned++) {
            if (s->buf[scanned] == '\r' && s->buf[scanned + 1] == '\n') {
                *line = s->buf + s->pos;
                *len = scanned - s->pos;
                s->pos = scanned + 2;
                return 0;
            }
        }
        if (s->end - s->pos > MAX_LINE) return EPROTO;
        if (s->pos > 0) {  /* keep the partial line at the front */
            memmove(s->buf, s->buf + s->pos, s->end - s->pos);
            scanned -= s->pos;
            s->end -= s->pos;
            s->pos = 0;
        }
        struct iovec iov = {.iov_base = s->buf + s->end, .iov_len = READ_BUF - s->end};
        ssize_t got = recv_iov(s, &iov, 1, 0);
        if (got < 0) return (int)-got;
        s->end += (size_t)got;
    }
}

/* A bulk reply's length from its line "$<n>" (-1: nil); -2 when the line is no bulk length. */
static long long bulk_length(const char *line, size_t len) {
    if (len < 2 || line[0] != '$') return -2;
    if (len == 3 && line[1] == '-' && line[2] == '1') return -1;
    long long n = 0;
    for (size_t i = 1; i < len; i++) {
        if (line[i] < '0' || line[i] > '9' || n > MAX_BULK) return -2;
        n = n * 10 + (line[i] - '0');
    }
    return n > MAX_BULK ? -2 : n;
}

static int stream_open(PyObject *sock, double timeout_s, Stream *s) {
    s->fd = PyObject_AsFileDescriptor(sock);
    if (s->fd < 0) {  /* a closed socket (fileno -1): an OSError, as the twin's */
        if (PyErr_ExceptionMatches(PyExc_ValueError)) {
            PyErr_Clear();
            errno = EBADF;
            PyErr_SetFromErrno(PyExc_OSError);
        }
        return -1;
    }
    int fl = fcntl(s->fd, F_GETFL);
    s->blocking = fl >= 0 && !(fl & O_NONBLOCK);
    /* NOTE: at least 1 ms a wait (poll(0) would never wait), at most a day (an int of ms) */
    s->timeout_ms = timeout_s > 0 ? (int)(timeout_s < 86400.0 ? (timeout_s * 1000.0 > 1.0 ? timeout_s * 1000.0 : 1.0)
                                           : 86400000.0) : -1;
    s->pos = s->end = 0;
    return 0;
}

static PyObject *raise_errno(int err) {
    if (err == ETIMEDOUT) return PyErr_Format(PyExc_TimeoutError, "redis server: no reply within the timeout");
    errno = err;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* Buffers held for one call (their memory cannot move while the GIL is given up). */
typedef struct {
    Py_ssize_t count;
    Py_buffer views[MAX_TARGET_PARTS];
} Held;

static void held_release(Held *h) {
    for (Py_ssize_t i = 0; i < h->count; i++) PyBuffer_Release(&h->views[i]);
    h->count = 0;
}

static int held_take(PyObject *seq_obj, int flags, Held *h) {
    h->count = 0;
    PyObject *seq = PySequence_Fast(seq_obj, "parts must be a sequence of bytes-like objects");
    if (seq == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > MAX_TARGET_PARTS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "at most %d parts, got %zd", MAX_TARGET_PARTS, n);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &h->views[i], flags) < 0) {
            held_release(h);
            Py_DECREF(seq);
            return -1;
        }
        h->count++;
    }
    Py_DECREF(seq);
    return 0;
}

PyDoc_STRVAR(call_doc,
"call(sock, parts, timeout_s) -> bytes\n--\n\n"
"Send the bytes of `parts` (one or more whole RESP commands' worth, in order) and read one reply:\n"
"its first line without CRLF (b\"+OK\", b\":1\", b\"$-1\", b\"-ERR ...\"); a bulk reply's value is\n"
"read and dropped. Raises TimeoutError, OSError (the connection is then unusable: close it).");

static PyObject *call(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *sock, *parts_obj;
    double timeout_s;
    if (!PyArg_ParseTuple(args, "OOd:call", &sock, &parts_obj, &timeout_s)) return NULL;
    Stream *s = PyMem_Malloc(sizeof(Stream));
    if (s == NULL) return PyErr_NoMemory();
    Held held;
    if (stream_open(sock, timeout_s, s) < 0 || held_take(parts_obj, PyBUF_SIMPLE, &held) < 0) {
        PyMem_Free(s);
        return NULL;
    }
    struct iovec iov[MAX_TARGET_PARTS];
    int count = 0;
    for (Py_ssize_t i = 0; i < held.count; i++) {
        if (held.views[i].len == 0) continue;
        iov[count].iov_base = held.views[i].buf;
        iov[count++].iov_len = (size_t)held.views[i].len;
    }
    const char *line = NULL;
    size_t len = 0;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = send_iov(s, iov, count);
    if (!err) err = read_line(s, &line, &len);
    if (!err) {
        long long n = bulk_length(line, len);
        if (n >= 0) {
            size_t at = (size_t)(line - s->buf);  /* the line stays in buf: skip only consumes after it */
            err = skip(s, n);
            if (!err) err = expect_crlf(s);
            line = s->buf + at;
        }
        if (!err && s->pos != s->end) err = EPROTO;  /* bytes past the one reply: the stream is out of step */
    }
    Py_END_ALLOW_THREADS
    held_release(&held);
    PyObject *result = err ? raise_errno(err) : PyBytes_FromStringAndSize(line, (Py_ssize_t)len);
    PyMem_Free(s);
    return result;
}

typedef struct {
    Held held;
    Py_ssize_t want;           /* the bytes of the buffers: the value length read into them */
    Py_ssize_t checksum_from;  /* the payload's checksum covers the value from this byte on */
    long long length;          /* the reply: -1 nil, -2 error, else the value's length */
    unsigned long long checksum;
    char error[MAX_LINE + 1];
    Py_ssize_t error_len;
} Target;

/* Read one GET reply into t: its value into t's buffers when it is exactly t->want bytes, else dropped. */
static int read_get_reply(Stream *s, Target *t) {
    const char *line;
    size_t len;
    int err = read_line(s, &line, &len);
    if (err) return err;
    if (len > 0 && line[0] == '-') {
        size_t copy = len - 1 < MAX_LINE ? len - 1 : MAX_LINE;
        t->length = -2;
        memcpy(t->error, line + 1, copy);
        t->error[copy] = '\0';
        t->error_len = (Py_ssize_t)copy;
        return 0;
    }
    t->length = bulk_length(line, len);
    if (t->length == -2) return EPROTO;
    if (t->length < 0) return 0;
    if (t->length != t->want) {
        err = skip(s, t->length);
        return err ? err : expect_crlf(s);
    }
    struct iovec iov[MAX_TARGET_PARTS];
    int count = 0;
    for (Py_ssize_t i = 0; i < t->held.count; i++) {
        if (t->held.views[i].len == 0) continue;
        iov[count].iov_base = t->held.views[i].buf;
        iov[count++].iov_len = (size_t)t->held.views[i].len;
    }
    err = read_exact(s, iov, count);
    if (!err) err = expect_crlf(s);
    if (err) return err;
    XXH3_state_t state;
    XXH3_INITSTATE(&state);
    XXH3_64bits_reset(&state);
    Py_ssize_t from = t->checksum_from;
    for (Py_ssize_t i = 0; i < t->held.count; i++) {
        const char *buf = t->held.views[i].buf;
        Py_ssize_t part = t->held.views[i].len, drop = from < part ? from : part;
        from -= drop;
        if (part > drop) XXH3_64bits_update(&state, buf + drop, (size_t)(part - drop));
    }
    t->checksum = (unsigned long long)XXH3_64bits_digest(&state);
    return 0;
}

PyDoc_STRVAR(get_many_into_doc,
"get_many_into(sock, command, targets, timeout_s) -> list of (length, checksum or message)\n--\n\n"
"Send `command` (one GET per target, in order, pipelined) and read a reply per `(parts,\n"
"checksum_from)` of `targets`: a value of exactly the bytes of the writable buffers `parts` is read\n"
"into them, in order, and comes back as (length, xxh3_64 of its bytes from `checksum_from` on); a nil\n"
"as (-1, None); a value of another length, dropped unread, as (length, None); an error reply as\n"
"(-2, its message). Raises TimeoutError, OSError (the connection is then unusable: close it).");

static PyObject *get_many_into(PyObject *self, PyObject *args) {
    (void)self;
    PyObject *sock, *targets_obj;
    Py_buffer command;
    double timeout_s;
    if (!PyArg_ParseTuple(args, "Oy*Od:get_many_into", &sock, &command, &targets_obj, &timeout_s)) return NULL;
    PyObject *result = NULL, *targets = NULL;
    Stream *s = PyMem_Malloc(sizeof(Stream));
    Target *t = NULL;
    Py_ssize_t n = 0, held = 0;
    if (s == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    if (stream_open(sock, timeout_s, s) < 0) goto done;
    targets = PySequence_Fast(targets_obj, "targets must be a sequence of (parts, checksum_from)");
    if (targets == NULL) goto done;
    n = PySequence_Fast_GET_SIZE(targets);
    t = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Target));
    if (t == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < n; held++) {
        PyObject *parts_obj, *target = PySequence_Fast_GET_ITEM(targets, held);
        if (!PyTuple_Check(target)) {
            PyErr_SetString(PyExc_TypeError, "each target must be a tuple (parts, checksum_from)");
            goto done;
        }
        if (!PyArg_ParseTuple(target, "On:get_many_into target", &parts_obj, &t[held].checksum_from)) goto done;
        if (t[held].checksum_from < 0) {
            PyErr_Format(PyExc_ValueError, "checksum_from must be >= 0, got %zd", t[held].checksum_from);
            goto done;
        }
        if (held_take(parts_obj, PyBUF_WRITABLE, &t[held].held) < 0) goto done;
        for (Py_ssize_t i = 0; i < t[held].held.count; i++) t[held].want += t[held].held.views[i].len;
    }
    int err;
    Py_BEGIN_ALLOW_THREADS
    struct iovec iov = {.iov_base = command.buf, .iov_len = (size_t)command.len};
    err = send_iov(s, &iov, command.len > 0);
    for (Py_ssize_t i = 0; !err && i < n; i++) err = read_get_reply(s, &t[i]);
    if (!err && s->pos != s->end) err = EPROTO;
    Py_END_ALLOW_THREADS
    if (err) {
        raise_errno(err);
        goto done;
    }
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        PyObject *item = t[i].length == -2 ? Py_BuildValue("(iy#)", -2, t[i].error, t[i].error_len)
            : t[i].length >= 0 && t[i].length == t[i].want ? Py_BuildValue("(LK)", t[i].length, t[i].checksum)
            : Py_BuildValue("(LO)", t[i].length, Py_None);
        if (item == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, item);
    }
done:
    for (Py_ssize_t i = 0; t != NULL && i < held; i++) held_release(&t[i].held);
    PyMem_Free(t);
    PyMem_Free(s);
    Py_XDECREF(targets);
    PyBuffer_Release(&command);
    return result;
}

static PyMethodDef resp_methods[] = {
    {"call", call, METH_VARARGS, call_doc},
    {"get_many_into", get_many_into, METH_VARARGS, get_many_into_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef resp_module = {
    PyModuleDef_HEAD_INIT, "kvtier.tiers.remote._resp",
    "The remote tier's GET and SET as one GIL-free call each (RESP2, plain sockets); see pyresp.py.", -1,
    resp_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__resp(void) { return PyModule_Create(&resp_module); }
