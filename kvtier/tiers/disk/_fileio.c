/* kvtier.tiers.disk._fileio: the disk tier's object I/O as one call each that never holds the GIL.
 *
 * Why native: with several I/O threads on few cores, every syscall of a Python write (open,
 * writev, fsync, link, close) gives the GIL up and must win it back behind the other threads'
 * Python; done here, a put gives it up once, and a read likewise (README: "Why the file I/O is
 * compiled").
 *
 * The Python twin is pyfileio.py: same names, signatures and syscalls in the same order, same
 * cleanup (nothing left behind on any failure). Every call enters the fan-out folder with
 * O_NOFOLLOW | O_DIRECTORY relative to the root's descriptor, so a link cannot lead it outside.
 * Names are plain strings ("s"): the store builds them from hex digests only.
 *
 * With `direct`, objects are opened with O_DIRECT (tiers/disk/direct.py): a part whose memory is not
 * aligned to DIRECT_ALIGN moves through an aligned stand-in, and an object whose parts are not all
 * whole multiples of it moves as one stand-in rounded up (a write then truncates the file back).
 *
 * read_many_into also takes each payload's xxh3_64 right after reading it, while its bytes are
 * still in the core's cache, with xxHash itself (third_party/xxhash/xxhash.h, the version
 * python-xxhash 4.1 bundles, BSD-2-Clause): the format's checksum, the value `payload_checksum` gives.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define XXH_INLINE_ALL
#include "xxhash/xxhash.h"

#ifndef IOV_MAX
#define IOV_MAX 1024
#endif

/* The parts of an object, held as buffers for the duration of a call (their memory cannot move). */
typedef struct {
    Py_ssize_t count;   /* buffers held */
    Py_buffer *views;
    struct iovec *iov;  /* the non-empty ones, in order */
    int iov_count;
} Parts;

static void parts_release(Parts *p) {
    for (Py_ssize_t i = 0; i < p->count; i++) PyBuffer_Release(&p->views[i]);
    PyMem_Free(p->views);
    PyMem_Free(p->iov);
}

static int parts_hold(PyObject *seq_obj, int flags, Parts *p) {
    memset(p, 0, sizeof(*p));
    PyObject *seq = PySequence_Fast(seq_obj, "parts must be a sequence of bytes-like objects");
    if (seq == NULL) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    p->views = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    p->iov = PyMem_Calloc(n ? (size_t)n : 1, sizeof(struct iovec));
    if (p->views == NULL || p->iov == NULL) {
        Py_DECREF(seq);
        parts_release(p);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        /* C-contiguous bytes (PyBUF_SIMPLE), as memoryview(part).cast("B") needs in the twins */
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(seq, i), &p->views[i], flags) < 0) {
            Py_DECREF(seq);
            parts_release(p);
            return -1;
        }
        p->count++;
        if (p->views[i].len > 0) {
            p->iov[p->iov_count].iov_base = p->views[i].buf;
            p->iov[p->iov_count].iov_len = (size_t)p->views[i].len;
            p->iov_count++;
        }
    }
    Py_DECREF(seq);
    return 0;
}

/* Drop `n` bytes from the front of the iovec array (*iov, *left): after a short readv/writev. */
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

/* Write every byte of `iov` to fd; 0 or an errno. Advances the iovecs (a call uses them once). */
static int write_iov(int fd, struct iovec *iov, int left) {
    while (left > 0) {
        ssize_t written = writev(fd, iov, left < IOV_MAX ? left : IOV_MAX);
        if (written < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        if (written == 0) return EIO;
        iov_consume(&iov, &left, (size_t)written);
    }
    return 0;
}

#define DIRECT_ALIGN 4096  /* O_DIRECT: addresses, lengths and offsets in whole logical blocks; 4096 covers every disk */

/* An O_DIRECT transfer of some parts: the iovecs the system calls move, with an aligned stand-in
 * (in `bounce`) for each part whose memory is not aligned, or a single one for the whole object,
 * rounded up, when some part's length is not a whole multiple of DIRECT_ALIGN. Built and used
 * without the GIL (malloc, not PyMem). */
typedef struct {
    struct iovec *iov;
    int iov_count;
    char *bounce;
    int whole;
    size_t total;  /* bytes of the parts */
} Direct;

static size_t round_up(size_t n) { return (n + DIRECT_ALIGN - 1) / DIRECT_ALIGN * DIRECT_ALIGN; }

static void direct_release(Direct *d) {
    free(d->bounce);
    free(d->iov);
}

/* The stand-ins of `p` (a write copies the parts into them); 0 or ENOMEM. */
static int direct_prepare(const Parts *p, Direct *d, int writing) {
    memset(d, 0, sizeof(*d));
    size_t bounced = 0;
    for (int i = 0; i < p->iov_count; i++) {
        d->total += p->iov[i].iov_len;
        if (p->iov[i].iov_len % DIRECT_ALIGN) d->whole = 1;
        else if ((uintptr_t)p->iov[i].iov_base % DIRECT_ALIGN) bounced += p->iov[i].iov_len;
    }
    if (d->whole) bounced = round_up(d->total);
    d->iov = calloc(p->iov_count ? (size_t)p->iov_count : 1, sizeof(struct iovec));
    if (d->iov == NULL || (bounced && posix_memalign((void **)&d->bounce, DIRECT_ALIGN, bounced) != 0)) {
        d->bounce = NULL;
        direct_release(d);
        return ENOMEM;
    }
    size_t at = 0;
    for (int i = 0; i < p->iov_count; i++) {
        const struct iovec *part = &p->iov[i];
        int stand_in = d->whole || (uintptr_t)part->iov_base % DIRECT_ALIGN;
        if (stand_in && writing) memcpy(d->bounce + at, part->iov_base, part->iov_len);
        if (!d->whole) d->iov[d->iov_count++] = stand_in ? (struct iovec){d->bounce + at, part->iov_len} : *part;
        if (stand_in) at += part->iov_len;
    }
    if (d->whole) {
        memset(d->bounce + at, 0, bounced - at);
        d->iov[0] = (struct iovec){d->bounce, bounced};
        d->iov_count = 1;
    }
    return 0;
}

/* After a read of `got` bytes: the stand-ins' bytes into the parts they stand in for. */
static void direct_unload(const Parts *p, const Direct *d, size_t got) {
    size_t at = 0, from = 0;
    for (int i = 0; i < p->iov_count && at < got; i++) {
        const struct iovec *part = &p->iov[i];
        size_t n = part->iov_len < got - at ? part->iov_len : got - at;
        if (d->whole || (uintptr_t)part->iov_base % DIRECT_ALIGN) {
            memcpy(part->iov_base, d->bounce + from, n);
            from += part->iov_len;
        }
        at += part->iov_len;
    }
}

/* Write every byte of the parts to fd (opened with O_DIRECT when `direct`); 0 or an errno.
 * Advances p->iov (a call uses it once). */
static int write_all(int fd, Parts *p, int direct) {
    if (!direct) return write_iov(fd, p->iov, p->iov_count);
    Direct d;
    int err = direct_prepare(p, &d, 1);
    if (!err) err = write_iov(fd, d.iov, d.iov_count);
    if (!err && d.whole && round_up(d.total) != d.total && ftruncate(fd, (off_t)d.total) != 0) err = errno;
    direct_release(&d);
    return err;
}

static int open_retrying(int dir_fd, const char *path, int flags, int mode) {
    int fd;
    do {
        fd = openat(dir_fd, path, flags | O_CLOEXEC, mode);
    } while (fd < 0 && errno == EINTR);
    return fd;
}

/* The fan-out folder `fanout` of the root `root_fd`, never through a link (ENOTDIR then). */
static int open_fanout(int root_fd, const char *fanout) {
    return open_retrying(root_fd, fanout, O_PATH | O_DIRECTORY | O_NOFOLLOW, 0);
}

static int fsync_retrying(int fd) {
    while (fsync(fd) != 0) {
        if (errno != EINTR) return errno;
    }
    return 0;
}

/* Raise OSError (or its errno subclass, e.g. FileExistsError) for `err` at `path`. */
static PyObject *raise_errno(int err, const char *path) {
    errno = err;
    return PyErr_SetFromErrnoWithFilename(PyExc_OSError, path);
}

PyDoc_STRVAR(publish_unnamed_doc,
"publish_unnamed(root_fd, fanout, name, parts, fsync, via_proc, mode, direct=False)\n--\n\n"
"Write `parts` to an O_TMPFILE inode in the fan-out folder, fsync it if asked, and link it at\n"
"`name`: linkat(fd, \"\", AT_EMPTY_PATH), or through /proc/self/fd/N when `via_proc`.\n"
"Raises OSError with nothing left behind (the kernel frees the unnamed inode); FileExistsError\n"
"when `name` exists, which the caller resolves (write_renamed replaces it atomically).\n"
"With `direct`, the inode is written with O_DIRECT.");

static PyObject *publish_unnamed(PyObject *self, PyObject *args) {
    (void)self;
    const char *fanout, *name;
    PyObject *parts_obj;
    int root_fd, do_fsync, via_proc, mode, direct = 0;
    Parts parts;
    if (!PyArg_ParseTuple(args, "issOppi|p:publish_unnamed", &root_fd, &fanout, &name, &parts_obj, &do_fsync,
                          &via_proc, &mode, &direct) || parts_hold(parts_obj, PyBUF_SIMPLE, &parts) < 0)
        return NULL;

    int err = 0;
    const char *err_path = name;
    Py_BEGIN_ALLOW_THREADS
    int dir_fd = open_fanout(root_fd, fanout);
    int fd = dir_fd < 0 ? -1 : open_retrying(dir_fd, ".", O_TMPFILE | O_WRONLY | (direct ? O_DIRECT : 0), mode);
    if (fd < 0) {
        err = errno;
        err_path = fanout;
    } else {
        err = write_all(fd, &parts, direct);
        if (!err && do_fsync) err = fsync_retrying(fd);
        if (!err) {
            int linked;
            if (via_proc) {
                char proc_path[64];
                snprintf(proc_path, sizeof proc_path, "/proc/self/fd/%d", fd);
                linked = linkat(AT_FDCWD, proc_path, dir_fd, name, AT_SYMLINK_FOLLOW);
            } else {
                linked = linkat(fd, "", dir_fd, name, AT_EMPTY_PATH);
            }
            if (linked != 0) err = errno;
        }
        if (close(fd) != 0 && !err && errno != EINTR) err = errno;
    }
    if (dir_fd >= 0) close(dir_fd);
    Py_END_ALLOW_THREADS

    parts_release(&parts);
    return err ? raise_errno(err, err_path) : Py_NewRef(Py_None);
}

PyDoc_STRVAR(write_renamed_doc,
"write_renamed(root_fd, fanout, temp_name, name, parts, fsync, mode, direct=False)\n--\n\n"
"Create `temp_name` (O_EXCL) in the fan-out folder, write `parts`, fsync if asked, close, and\n"
"rename it onto `name` (atomic). Raises OSError with the temporary file removed. With `direct`,\n"
"the file is written with O_DIRECT.");

static PyObject *write_renamed(PyObject *self, PyObject *args) {
    (void)self;
    const char *fanout, *temp, *name;
    PyObject *parts_obj;
    int root_fd, do_fsync, mode, direct = 0;
    Parts parts;
    if (!PyArg_ParseTuple(args, "isssOpi|p:write_renamed", &root_fd, &fanout, &temp, &name, &parts_obj, &do_fsync,
                          &mode, &direct) || parts_hold(parts_obj, PyBUF_SIMPLE, &parts) < 0)
        return NULL;

    int err = 0;
    const char *err_path = temp;
    Py_BEGIN_ALLOW_THREADS
    int dir_fd = open_fanout(root_fd, fanout);
    int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | (direct ? O_DIRECT : 0);
    int fd = dir_fd < 0 ? -1 : open_retrying(dir_fd, temp, flags, mode);
    if (fd < 0) {
        err = errno;
        if (dir_fd < 0) err_path = fanout;
    } else {
        err = write_all(fd, &parts, direct);
        if (!err && do_fsync) err = fsync_retrying(fd);
        if (close(fd) != 0 && !err && errno != EINTR) err = errno;  /* NFS reports write-back errors here */
        if (!err && renameat(dir_fd, temp, dir_fd, name) != 0) {
            err = errno;
            err_path = name;
        }
        if (err) unlinkat(dir_fd, temp, 0);
    }
    if (dir_fd >= 0) close(dir_fd);
    Py_END_ALLOW_THREADS

    parts_release(&parts);
    return err ? raise_errno(err, err_path) : Py_NewRef(Py_None);
}

/* What reading one object came to: bytes read, the file's size and inode, whether it is regular,
 * and an errno with the path it belongs to (0 when none). */
typedef struct {
    Py_ssize_t got;
    long long size;
    unsigned long long inode;
    int regular;
    int err;
    const char *err_path;
} ReadOutcome;

/* Fill `iov` from fd until `want` bytes or the end of the file, into out->got (or out->err). */
static void read_iov(int fd, struct iovec *iov, int left, Py_ssize_t want, ReadOutcome *out) {
    while (left > 0 && out->got < want) {
        ssize_t got = readv(fd, iov, left < IOV_MAX ? left : IOV_MAX);
        if (got < 0) {
            if (errno == EINTR) continue;
            out->err = errno;
            break;
        }
        if (got == 0) break;
        out->got += got;
        iov_consume(&iov, &left, (size_t)got);
    }
}

/* Open `name` in the fan-out folder (with O_DIRECT when `direct`) and, if it is a regular file of
 * exactly `want` bytes, fill `parts` from it. Runs without the GIL. */
static void read_one(int root_fd, const char *fanout, const char *name, Parts *parts, Py_ssize_t want,
                     int direct, ReadOutcome *out) {
    memset(out, 0, sizeof(*out));
    out->err_path = name;
    int dir_fd = open_fanout(root_fd, fanout);
    int fd = -1;
    if (dir_fd < 0) {
        out->err = errno;
        out->err_path = fanout;
    } else {
        int flags = O_RDONLY | O_NONBLOCK | O_NOFOLLOW;  /* NOTE: a FIFO never blocks */
        fd = open_retrying(dir_fd, name, flags | (direct ? O_DIRECT : 0), 0);
        if (fd < 0 && direct && errno == EINVAL) {  /* not a file O_DIRECT can open (a FIFO, a folder) */
            direct = 0;
            fd = open_retrying(dir_fd, name, flags, 0);
        }
        if (fd < 0) out->err = errno;
        close(dir_fd);
    }
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) != 0) out->err = errno;
    if (fd >= 0 && !out->err) {
        out->inode = (unsigned long long)st.st_ino;
        out->regular = S_ISREG(st.st_mode);
        out->size = (long long)st.st_size;
        if (out->regular && out->size == (long long)want) {
            Direct d;
            if (!direct) {
                read_iov(fd, parts->iov, parts->iov_count, want, out);
            } else if (!(out->err = direct_prepare(parts, &d, 0))) {
                read_iov(fd, d.iov, d.iov_count, want, out);
                direct_unload(parts, &d, (size_t)out->got);
                direct_release(&d);
            }
        }
    }
    if (fd >= 0) close(fd);  /* NOTE: a read-only close has nothing to report */
}

/* xxh3_64 of the bytes of `parts` from byte `from` on (the payload after a header). */
static unsigned long long parts_checksum(const Parts *parts, Py_ssize_t from) {
    XXH3_state_t state;
    XXH3_INITSTATE(&state);
    XXH3_64bits_reset(&state);
    for (Py_ssize_t i = 0; i < parts->count; i++) {
        const char *buf = parts->views[i].buf;
        Py_ssize_t len = parts->views[i].len;
        Py_ssize_t skip = from < len ? from : len;
        from -= skip;
        if (len > skip) XXH3_64bits_update(&state, buf + skip, (size_t)(len - skip));
    }
    return (unsigned long long)XXH3_64bits_digest(&state);
}

/* (got, size or None, inode) of a read that raised nothing. */
static PyObject *outcome_tuple(const ReadOutcome *o) {
    return o->regular ? Py_BuildValue("nLK", o->got, o->size, o->inode) : Py_BuildValue("nOK", o->got, Py_None, o->inode);
}

/* The OSError of a failed read, as an object to return (read_into raises it instead). */
static PyObject *outcome_error(const ReadOutcome *o) {
    return PyObject_CallFunction(PyExc_OSError, "iss", o->err, strerror(o->err), o->err_path);
}

PyDoc_STRVAR(read_into_doc,
"read_into(root_fd, fanout, name, parts, want, direct=False) -> (got, size, inode)\n--\n\n"
"Open `name` in the fan-out folder (O_NONBLOCK | O_NOFOLLOW) and, if it is a regular file of\n"
"exactly `want` bytes, fill the writable buffers `parts` in order from it. Returns the bytes\n"
"read, the file's size (None when it is not a regular file) and its inode; nothing is read\n"
"unless the size is `want`. Raises OSError (FileNotFoundError when absent, ELOOP for a link).\n"
"With `direct`, a file that O_DIRECT can open is read with it.");

static PyObject *read_into(PyObject *self, PyObject *args) {
    (void)self;
    const char *fanout, *name;
    PyObject *parts_obj;
    int root_fd;
    Py_ssize_t want;
    int direct = 0;
    Parts parts;
    if (!PyArg_ParseTuple(args, "issOn|p:read_into", &root_fd, &fanout, &name, &parts_obj, &want, &direct)
            || parts_hold(parts_obj, PyBUF_WRITABLE, &parts) < 0)
        return NULL;
    ReadOutcome outcome;
    Py_BEGIN_ALLOW_THREADS
    read_one(root_fd, fanout, name, &parts, want, direct, &outcome);
    Py_END_ALLOW_THREADS
    parts_release(&parts);
    if (outcome.err) return raise_errno(outcome.err, outcome.err_path);
    return outcome_tuple(&outcome);
}

PyDoc_STRVAR(read_many_into_doc,
"read_many_into(root_fd, requests, direct=False) -> list of ((got, size, inode), checksum) or OSError\n--\n\n"
"read_into for each `(fanout, name, parts, want, checksum_from)` of `requests`, in order, in one\n"
"call that gives the GIL up once: each result is what read_into would return with the xxh3_64 of\n"
"the bytes read into `parts` from byte `checksum_from` on (None unless all `want` bytes were\n"
"read), or the OSError read_into would raise.");

static PyObject *read_many_into(PyObject *self, PyObject *args) {
    (void)self;
    int root_fd, direct = 0;
    PyObject *requests_obj;
    if (!PyArg_ParseTuple(args, "iO|p:read_many_into", &root_fd, &requests_obj, &direct)) return NULL;
    PyObject *requests = PySequence_Fast(requests_obj, "requests must be a sequence of (fanout, name, parts, want)");
    if (requests == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(requests), held = 0;
    Parts *parts = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Parts));
    const char **fanouts = PyMem_Calloc(n ? (size_t)n : 1, sizeof(char *));
    const char **names = PyMem_Calloc(n ? (size_t)n : 1, sizeof(char *));
    Py_ssize_t *wants = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_ssize_t));
    Py_ssize_t *froms = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_ssize_t));
    unsigned long long *checksums = PyMem_Calloc(n ? (size_t)n : 1, sizeof(unsigned long long));
    ReadOutcome *outcomes = PyMem_Calloc(n ? (size_t)n : 1, sizeof(ReadOutcome));
    PyObject *result = NULL;
    if (parts == NULL || fanouts == NULL || names == NULL || wants == NULL || froms == NULL || checksums == NULL
            || outcomes == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < n; held++) {
        PyObject *parts_obj;
        /* NOTE: the strings live in `requests`, which this call holds until it returns */
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(requests, held), "ssOnn:read_many_into request",
                              &fanouts[held], &names[held], &parts_obj, &wants[held], &froms[held])
                || parts_hold(parts_obj, PyBUF_WRITABLE, &parts[held]) < 0)
            goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        read_one(root_fd, fanouts[i], names[i], &parts[i], wants[i], direct, &outcomes[i]);
        if (!outcomes[i].err && outcomes[i].got == wants[i]) checksums[i] = parts_checksum(&parts[i], froms[i]);
    }
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        PyObject *item;
        if (outcomes[i].err) {
            item = outcome_error(&outcomes[i]);
        } else {
            PyObject *read = outcome_tuple(&outcomes[i]);
            item = read == NULL ? NULL
                : outcomes[i].got == wants[i] ? Py_BuildValue("NK", read, checksums[i]) : Py_BuildValue("NO", read, Py_None);
        }
        if (item == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, item);
    }
done:
    for (Py_ssize_t i = 0; parts != NULL && i < held; i++) parts_release(&parts[i]);
    PyMem_Free(parts);
    PyMem_Free(fanouts);
    PyMem_Free(names);
    PyMem_Free(wants);
    PyMem_Free(froms);
    PyMem_Free(checksums);
    PyMem_Free(outcomes);
    Py_DECREF(requests);
    return result;
}

/* The little-endian u64 at `at` of `buf` (the format's byte order, on any host). */
static unsigned long long load_u64_le(const unsigned char *buf) {
    unsigned long long value = 0;
    for (int i = 7; i >= 0; i--) value = (value << 8) | buf[i];
    return value;
}

#define MAX_EXPECT 8  /* (offset, bytes) pieces a read_many_known request may name */

/* A request of read_many_known: its read, and the bytes its header must hold (taken out of the
 * request while holding the GIL; the bytes live in it, which the call holds until it returns). */
typedef struct {
    const char *fanout, *name;
    Parts parts;
    Py_ssize_t want, checksum_at;
    unsigned long long known;
    int expect_count;
    Py_ssize_t expect_at[MAX_EXPECT], expect_len[MAX_EXPECT];
    const char *expect_bytes[MAX_EXPECT];
    int verified;
} KnownRead;

/* Take `expect`, a tuple of at most MAX_EXPECT (offset, bytes) pairs, into `r`; else a TypeError or ValueError. */
static int expect_take(PyObject *expect, KnownRead *r) {
    if (!PyTuple_Check(expect)) goto bad;
    if (PyTuple_GET_SIZE(expect) > MAX_EXPECT) {
        PyErr_Format(PyExc_ValueError, "expect names at most %d pieces", MAX_EXPECT);
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(expect); i++) {
        PyObject *pair = PyTuple_GET_ITEM(expect, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 || !PyLong_Check(PyTuple_GET_ITEM(pair, 0))
                || !PyBytes_Check(PyTuple_GET_ITEM(pair, 1)))
            goto bad;
        r->expect_at[i] = PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 0));
        if (r->expect_at[i] == -1 && PyErr_Occurred()) return 0;
        r->expect_bytes[i] = PyBytes_AS_STRING(PyTuple_GET_ITEM(pair, 1));
        r->expect_len[i] = PyBytes_GET_SIZE(PyTuple_GET_ITEM(pair, 1));
        r->expect_count++;
    }
    return 1;
bad:
    PyErr_SetString(PyExc_TypeError, "expect must be a tuple of (offset, bytes) pairs");
    return 0;
}

/* Whether a whole read's header (parts[0]) is the one whose xxh3_64 is `known` (stored in its last 8
 * bytes), holds every `expect` piece, and names the payload's (parts[1:]) xxh3_64 at `checksum_at`.
 * Runs without the GIL. */
static int known_read_holds(const KnownRead *r, const ReadOutcome *o) {
    if (o->err || !o->regular || o->got != r->want || r->parts.count < 1) return 0;
    const unsigned char *header = r->parts.views[0].buf;
    Py_ssize_t len = r->parts.views[0].len;
    if (len < 16 || r->checksum_at < 0 || r->checksum_at > len - 16) return 0;
    if (load_u64_le(header + len - 8) != r->known || XXH3_64bits(header, (size_t)(len - 8)) != r->known) return 0;
    for (int i = 0; i < r->expect_count; i++) {
        Py_ssize_t at = r->expect_at[i], size = r->expect_len[i];
        if (at < 0 || at > len || size > len - at || memcmp(header + at, r->expect_bytes[i], (size_t)size) != 0)
            return 0;
    }
    return load_u64_le(header + r->checksum_at) == parts_checksum(&r->parts, len);
}

PyDoc_STRVAR(read_many_known_doc,
"read_many_known(root_fd, requests, direct=False) -> list of True, (got, size, inode) or OSError\n--\n\n"
"read_into for each `(fanout, name, parts, want, known, checksum_at, expect)` of `requests`, in\n"
"order, in one call that gives the GIL up once, for objects whose header the caller knows by its\n"
"checksum. True when all `want` bytes were read and the header (parts[0]) ends with the u64\n"
"`known` that is the xxh3_64 of the rest of it, holds each `(offset, bytes)` of `expect`, and\n"
"has at `checksum_at` the xxh3_64 of the payload (parts[1:]), all little-endian; else what\n"
"read_into returns (the caller's own checks say what is wrong), or the OSError it raises.");

static PyObject *read_many_known(PyObject *self, PyObject *args) {
    (void)self;
    int root_fd, direct = 0;
    PyObject *requests_obj;
    if (!PyArg_ParseTuple(args, "iO|p:read_many_known", &root_fd, &requests_obj, &direct)) return NULL;
    PyObject *requests = PySequence_Fast(requests_obj, "requests must be a sequence of (fanout, name, parts, "
                                         "want, known, checksum_at, expect)");
    if (requests == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(requests), held = 0;
    KnownRead *reads = PyMem_Calloc(n ? (size_t)n : 1, sizeof(KnownRead));
    ReadOutcome *outcomes = PyMem_Calloc(n ? (size_t)n : 1, sizeof(ReadOutcome));
    PyObject *result = NULL;
    if (reads == NULL || outcomes == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < n; held++) {
        KnownRead *r = &reads[held];
        PyObject *parts_obj, *expect;
        /* NOTE: the strings and `expect` live in `requests`, which this call holds until it returns */
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(requests, held), "ssOnKnO:read_many_known request",
                              &r->fanout, &r->name, &parts_obj, &r->want, &r->known, &r->checksum_at, &expect)
                || !expect_take(expect, r) || parts_hold(parts_obj, PyBUF_WRITABLE, &r->parts) < 0)
            goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) {
        read_one(root_fd, reads[i].fanout, reads[i].name, &reads[i].parts, reads[i].want, direct, &outcomes[i]);
        reads[i].verified = known_read_holds(&reads[i], &outcomes[i]);
    }
    Py_END_ALLOW_THREADS
    result = PyList_New(n);
    for (Py_ssize_t i = 0; result != NULL && i < n; i++) {
        PyObject *item;
        if (outcomes[i].err) {
            item = outcome_error(&outcomes[i]);
        } else if (reads[i].verified) {
            item = Py_NewRef(Py_True);
        } else {
            item = outcome_tuple(&outcomes[i]);
        }
        if (item == NULL) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, i, item);
    }
done:
    for (Py_ssize_t i = 0; reads != NULL && i < held; i++) parts_release(&reads[i].parts);
    PyMem_Free(reads);
    PyMem_Free(outcomes);
    Py_DECREF(requests);
    return result;
}

static PyMethodDef fileio_methods[] = {
    {"publish_unnamed", publish_unnamed, METH_VARARGS, publish_unnamed_doc},
    {"write_renamed", write_renamed, METH_VARARGS, write_renamed_doc},
    {"read_into", read_into, METH_VARARGS, read_into_doc},
    {"read_many_into", read_many_into, METH_VARARGS, read_many_into_doc},
    {"read_many_known", read_many_known, METH_VARARGS, read_many_known_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fileio_module = {
    PyModuleDef_HEAD_INIT, "kvtier.tiers.disk._fileio",
    "The disk tier's object writes and reads in one GIL-free call each (Linux); see fileio.py.", -1, fileio_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fileio(void) { return PyModule_Create(&fileio_module); }
