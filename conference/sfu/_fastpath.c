/* The forwarding core's native send: one call per forwarded copy joins the rewritten RTP header
 * with the source packet's payload, protects it with the leg's own libsrtp session and sends it on
 * the leg's UDP socket.
 *
 * Why: in Python the same copy costs a concatenation (and a payload slice), pylibsrtp's wrapper
 * (an ffi.new, two buffer copies and a new bytes object per call) and the event loop transport's
 * sendto (argument checks and an address conversion per call). Here it is one copy into a static
 * buffer, one srtp_protect and one sendto(2).
 *
 * libsrtp is not linked here: the caller passes the address of srtp_protect from the library
 * copy pylibsrtp itself loaded and the session handle pylibsrtp created, so the SRTP state
 * (rollover counter, replay list, key usage) is the one the pure-Python path would use. The GIL
 * is held throughout: calls are serialised in the order Python makes them, as pylibsrtp's are.
 *
 * The pure-Python path (conference/sfu/aiortc_glue.py LegOutput.send) stays; both put the same
 * bytes on the wire (tests/test_fastpath.py). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include <structmember.h>

/* pylibsrtp's own limits: a 1500-byte buffer, SRTP_MAX_TRAILER_LEN (16 + 128) kept free. */
#define BUFFER_SIZE 1500
#define MAX_TRAILER 144

typedef int (*protect_fn)(void *ctx, void *rtp_header, int *len_ptr);

static unsigned char buffer[BUFFER_SIZE] __attribute__((aligned(16)));
static PyObject *srtp_error = NULL; /* pylibsrtp.Error, set by set_error() */

static int as_bytes(PyObject *obj, const char *what) {
    if (!PyBytes_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes", what);
        return 0;
    }
    return 1;
}

/* send_rtp(protect, session, fd, sockaddr, head, data, start, end)
 *   protect:  address of srtp_protect (int)
 *   session:  the srtp_t handle (int)
 *   fd:       the leg's UDP socket
 *   sockaddr: the destination as a struct sockaddr (bytes, from sockaddr())
 *   head:     the rewritten header (bytes)
 *   data, start, end: the payload is data[start:end]
 * Returns the number of bytes sent; on EAGAIN/ENOBUFS the protected datagram (bytes) for the caller
 * to queue on the transport; on another send error -errno. Raises pylibsrtp.Error if libsrtp
 * refuses, ValueError if the packet is longer than pylibsrtp accepts. */
static PyObject *send_rtp(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "send_rtp takes 8 arguments");
        return NULL;
    }
    protect_fn protect = (protect_fn)PyLong_AsVoidPtr(args[0]);
    void *session = PyLong_AsVoidPtr(args[1]);
    long fd = PyLong_AsLong(args[2]);
    Py_ssize_t start = PyLong_AsSsize_t(args[6]);
    Py_ssize_t end = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *addr = args[3], *head = args[4], *data = args[5];
    if (!as_bytes(addr, "sockaddr") || !as_bytes(head, "head") || !as_bytes(data, "data"))
        return NULL;
    if (protect == NULL || session == NULL) {
        PyErr_SetString(PyExc_ValueError, "no SRTP session");
        return NULL;
    }
    Py_ssize_t data_len = PyBytes_GET_SIZE(data);
    if (start < 0 || end > data_len || start > end) {
        PyErr_SetString(PyExc_ValueError, "payload range out of the packet");
        return NULL;
    }
    Py_ssize_t head_len = PyBytes_GET_SIZE(head);
    Py_ssize_t length = head_len + (end - start);
    if (length > BUFFER_SIZE - MAX_TRAILER) {
        PyErr_SetString(PyExc_ValueError, "packet is too long");
        return NULL;
    }
    memcpy(buffer, PyBytes_AS_STRING(head), (size_t)head_len);
    memcpy(buffer + head_len, PyBytes_AS_STRING(data) + start, (size_t)(end - start));
    int len = (int)length;
    int status = protect(session, buffer, &len);
    if (status != 0) {
        PyErr_Format(srtp_error != NULL ? srtp_error : PyExc_RuntimeError, "srtp_protect failed with status %d",
                     status);
        return NULL;
    }
    ssize_t sent = sendto((int)fd, buffer, (size_t)len, 0, (const struct sockaddr *)PyBytes_AS_STRING(addr),
                          (socklen_t)PyBytes_GET_SIZE(addr));
    if (sent >= 0)
        return PyLong_FromSsize_t(sent);
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS || err == EINTR)
        return PyBytes_FromStringAndSize((const char *)buffer, len);
    return PyLong_FromLong(-err);
}

/* --- the rewriter's fast path ------------------------------------------------------------------
 * StreamRewriter.rewrite_head's fast path (the newest packet of the settled source; Opus/H.264, or
 * VP8 with X and I and a 15-bit picture id), done on the rewriter's own slots: bind_rewriter() takes
 * the offsets of its __slots__ member descriptors once, forward() reads and writes them directly on
 * an object of exactly that type. Anything else returns None and the caller takes the Python path,
 * which is the reference: tests/test_fastpath.py compares the datagrams and the slots' state. */

enum {
    S_LIVE, S_IN_HIGHEST, S_SEQ_OFFSET, S_TS_OFFSET, S_VP8, S_TAG, S_ABS_MASK, S_LEVEL_MASK, S_LEVEL_SHIFT,
    S_PAYLOAD_TYPE, S_SSRC, S_PREFIX, S_SUFFIX, S_PID_OFFSET, S_LAST_TIMESTAMP, S_LAST_TIME, S_PACKETS_SENT,
    S_OCTETS_SENT, S_IN_PICTURE_ID, S_TAIL, S_COUNT
};
static const char *slot_names[S_COUNT] = {
    "_live", "in_highest", "seq_offset", "ts_offset", "_vp8", "_tag", "_abs_mask", "_level_mask",
    "_level_shift", "payload_type", "ssrc", "_prefix", "_suffix", "_pid_offset", "last_timestamp",
    "last_time", "packets_sent", "octets_sent", "in_picture_id", "tail",
};
static PyTypeObject *rewriter_type = NULL;
static Py_ssize_t slot_offsets[S_COUNT];
static long max_sequence_step = 0;

#define SLOT(obj, i) (*(PyObject **)((char *)(obj) + slot_offsets[i]))

/* bind_rewriter(cls, max_sequence_step): the class whose slots forward() uses. */
static PyObject *bind_rewriter(PyObject *self, PyObject *args) {
    PyObject *cls;
    long step;
    if (!PyArg_ParseTuple(args, "O!l", &PyType_Type, &cls, &step))
        return NULL;
    PyObject *dict = ((PyTypeObject *)cls)->tp_dict;
    for (int i = 0; i < S_COUNT; i++) {
        PyObject *descr = PyDict_GetItemString(dict, slot_names[i]);
        if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type) {
            PyErr_Format(PyExc_TypeError, "%s is not a slot of the rewriter", slot_names[i]);
            return NULL;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "%s is not an object slot", slot_names[i]);
            return NULL;
        }
        slot_offsets[i] = member->offset;
    }
    Py_INCREF(cls);
    Py_XSETREF(rewriter_type, (PyTypeObject *)cls);
    max_sequence_step = step;
    Py_RETURN_NONE;
}

/* A slot's int, or -1 with an error set (the caller then falls back). */
static int slot_long(PyObject *obj, int i, long long *out) {
    PyObject *v = SLOT(obj, i);
    if (v == NULL || !PyLong_Check(v))
        return -1;
    *out = PyLong_AsLongLong(v);
    if (*out == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return 0;
}

/* A slot's unsigned 64-bit int (the extension word's tag and masks), as slot_long. */
static int slot_ulong(PyObject *obj, int i, unsigned long long *out) {
    PyObject *v = SLOT(obj, i);
    if (v == NULL || !PyLong_Check(v))
        return -1;
    *out = PyLong_AsUnsignedLongLong(v);
    if (*out == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return -1;
    }
    return 0;
}

static int set_slot(PyObject *obj, int i, PyObject *value) { /* steals value */
    if (value == NULL)
        return -1;
    Py_XSETREF(SLOT(obj, i), value);
    return 0;
}

static PyObject *send_buffer(protect_fn protect, void *session, long fd, PyObject *addr, Py_ssize_t length);

/* forward(rewriter, data, header, abs_send_time, audio_level, now, protect, session, fd, sockaddr):
 * rewrite_head's fast path + protect + send. None: not the fast path (nothing done, the caller
 * rewrites in Python); else what send_rtp returns. */
static PyObject *forward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "forward takes 10 arguments");
        return NULL;
    }
    PyObject *rw = args[0], *data = args[1], *header = args[2], *level_obj = args[4], *now = args[5];
    if (rewriter_type == NULL || Py_TYPE(rw) != rewriter_type || !PyBytes_Check(data) || !PyTuple_Check(header) ||
        PyTuple_GET_SIZE(header) != 10 || !PyFloat_Check(now))
        Py_RETURN_NONE;
    long long h[10];
    static const int used[] = {0, 2, 3, 4, 8, 9};
    for (int k = 0; k < 6; k++) {
        PyObject *v = PyTuple_GET_ITEM(header, used[k]);
        if (!PyLong_Check(v))
            Py_RETURN_NONE;
        h[used[k]] = PyLong_AsLongLong(v);
    }
    if (PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    long long marker = h[0], seq = h[2], timestamp = h[3], ssrc = h[4], pos = h[8], end = h[9];
    long long live, in_highest, seq_offset, ts_offset, level_shift, pt, out_ssrc;
    unsigned long long tag, abs_mask, level_mask;
    if (slot_long(rw, S_LIVE, &live) || slot_long(rw, S_IN_HIGHEST, &in_highest) ||
        slot_long(rw, S_SEQ_OFFSET, &seq_offset) || slot_long(rw, S_TS_OFFSET, &ts_offset) ||
        slot_long(rw, S_PAYLOAD_TYPE, &pt) || slot_long(rw, S_SSRC, &out_ssrc))
        Py_RETURN_NONE;
    Py_ssize_t data_len = PyBytes_GET_SIZE(data);
    if (ssrc != live || ((seq - in_highest - 1) & 0xFFFF) >= max_sequence_step || end - pos < 5 || pos < 0 ||
        end > data_len)
        Py_RETURN_NONE;
    PyObject *vp8_obj = SLOT(rw, S_VP8), *prefix = SLOT(rw, S_PREFIX), *suffix = SLOT(rw, S_SUFFIX);
    if (vp8_obj == NULL || !PyBool_Check(vp8_obj) || prefix == NULL || !PyBytes_Check(prefix) ||
        PyBytes_GET_SIZE(prefix) != 4 || suffix == NULL || !PyBytes_Check(suffix))
        Py_RETURN_NONE;
    if (slot_ulong(rw, S_TAG, &tag) || slot_ulong(rw, S_ABS_MASK, &abs_mask) ||
        slot_ulong(rw, S_LEVEL_MASK, &level_mask) || slot_long(rw, S_LEVEL_SHIFT, &level_shift) ||
        level_shift < 0 || level_shift > 57)
        Py_RETURN_NONE;
    long long ast = PyLong_AsLongLong(args[3]);
    if (ast == -1 && PyErr_Occurred())
        return NULL;
    const unsigned char *in = (const unsigned char *)PyBytes_AS_STRING(data);
    int vp8 = vp8_obj == Py_True;
    long long pid = -1, pid_offset = 0;
    if (vp8) {
        if (!((in[pos] & 0x80) && in[pos + 1] == 0x80 && (in[pos + 2] & 0x80)))
            Py_RETURN_NONE; /* another descriptor form: the Python path */
        if (slot_long(rw, S_PID_OFFSET, &pid_offset))
            Py_RETURN_NONE;
        pid = ((in[pos + 2] & 0x7F) << 8) | in[pos + 3];
    }
    Py_ssize_t suffix_len = PyBytes_GET_SIZE(suffix);
    long long tail = vp8 ? pos + 4 : pos;
    Py_ssize_t head_len = 24 + suffix_len + (vp8 ? 4 : 0);
    Py_ssize_t length = head_len + (Py_ssize_t)(end - tail);
    if (length > BUFFER_SIZE - MAX_TRAILER) {
        PyErr_SetString(PyExc_ValueError, "packet is too long");
        return NULL;
    }
    unsigned long long word = tag | ((unsigned long long)ast & abs_mask);
    if (!vp8 && level_mask) {
        long long level = 127;
        if (level_obj != Py_None) {
            level = PyLong_AsLongLong(level_obj);
            if (level == -1 && PyErr_Occurred())
                return NULL;
            level &= 0x7F;
        }
        word |= (unsigned long long)level << level_shift;
    }
    unsigned long out_seq = (unsigned long)((seq + seq_offset) & 0xFFFF);
    unsigned long long out_ts = (unsigned long long)((timestamp + ts_offset) & 0xFFFFFFFFLL);
    unsigned char *b = buffer;
    b[0] = 0x90;
    b[1] = (unsigned char)(((marker & 1) << 7) | (pt & 0x7F));
    b[2] = (unsigned char)(out_seq >> 8);
    b[3] = (unsigned char)out_seq;
    for (int k = 0; k < 4; k++)
        b[4 + k] = (unsigned char)(out_ts >> (24 - 8 * k));
    for (int k = 0; k < 4; k++)
        b[8 + k] = (unsigned char)((unsigned long long)out_ssrc >> (24 - 8 * k));
    memcpy(b + 12, PyBytes_AS_STRING(prefix), 4);
    for (int k = 0; k < 8; k++)
        b[16 + k] = (unsigned char)(word >> (56 - 8 * k));
    memcpy(b + 24, PyBytes_AS_STRING(suffix), (size_t)suffix_len);
    if (vp8) {
        unsigned long out_pid = 0x8000 | (unsigned long)((pid + pid_offset) & 0x7FFF);
        unsigned char *d = b + 24 + suffix_len;
        d[0] = in[pos];
        d[1] = 0x80;
        d[2] = (unsigned char)(out_pid >> 8);
        d[3] = (unsigned char)out_pid;
    }
    memcpy(b + head_len, in + tail, (size_t)(end - tail));
    /* The slot's state, as rewrite_head leaves it. */
    long long packets_sent, octets_sent;
    if (slot_long(rw, S_PACKETS_SENT, &packets_sent) || slot_long(rw, S_OCTETS_SENT, &octets_sent))
        Py_RETURN_NONE;
    Py_INCREF(PyTuple_GET_ITEM(header, 2));
    Py_INCREF(now);
    if (set_slot(rw, S_IN_HIGHEST, PyTuple_GET_ITEM(header, 2)) ||
        set_slot(rw, S_LAST_TIMESTAMP, PyLong_FromUnsignedLongLong(out_ts)) || set_slot(rw, S_LAST_TIME, now) ||
        set_slot(rw, S_PACKETS_SENT, PyLong_FromLongLong(packets_sent + 1)) ||
        set_slot(rw, S_OCTETS_SENT, PyLong_FromLongLong(octets_sent + (end - pos))) ||
        set_slot(rw, S_TAIL, PyLong_FromLongLong(tail)))
        return NULL;
    if (vp8 && set_slot(rw, S_IN_PICTURE_ID, PyLong_FromLongLong(pid)))
        return NULL;
    protect_fn protect = (protect_fn)PyLong_AsVoidPtr(args[6]);
    void *session = PyLong_AsVoidPtr(args[7]);
    long fd = PyLong_AsLong(args[8]);
    if (PyErr_Occurred())
        return NULL;
    if (!as_bytes(args[9], "sockaddr"))
        return NULL;
    return send_buffer(protect, session, fd, args[9], length);
}

/* Protect buffer[0:length] in place and send it (send_rtp's second half). */
static PyObject *send_buffer(protect_fn protect, void *session, long fd, PyObject *addr, Py_ssize_t length) {
    if (protect == NULL || session == NULL) {
        PyErr_SetString(PyExc_ValueError, "no SRTP session");
        return NULL;
    }
    int len = (int)length;
    int status = protect(session, buffer, &len);
    if (status != 0) {
        PyErr_Format(srtp_error != NULL ? srtp_error : PyExc_RuntimeError, "srtp_protect failed with status %d",
                     status);
        return NULL;
    }
    ssize_t sent = sendto((int)fd, buffer, (size_t)len, 0, (const struct sockaddr *)PyBytes_AS_STRING(addr),
                          (socklen_t)PyBytes_GET_SIZE(addr));
    if (sent >= 0)
        return PyLong_FromSsize_t(sent);
    int err = errno;
    if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS || err == EINTR)
        return PyBytes_FromStringAndSize((const char *)buffer, len);
    return PyLong_FromLong(-err);
}

/* unprotect(unprotect_fn, session, data) -> bytes: the RTP packet in an SRTP datagram, as
 * pylibsrtp's Session.unprotect gives it (one copy in, one out, no per-call allocation besides the
 * result). Raises pylibsrtp.Error if libsrtp refuses it (authentication, replay), ValueError if it
 * is longer than pylibsrtp's buffer. */
static PyObject *unprotect(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "unprotect takes 3 arguments");
        return NULL;
    }
    protect_fn fn = (protect_fn)PyLong_AsVoidPtr(args[0]);
    void *session = PyLong_AsVoidPtr(args[1]);
    if (PyErr_Occurred())
        return NULL;
    if (!as_bytes(args[2], "data"))
        return NULL;
    if (fn == NULL || session == NULL) {
        PyErr_SetString(PyExc_ValueError, "no SRTP session");
        return NULL;
    }
    Py_ssize_t length = PyBytes_GET_SIZE(args[2]);
    if (length > BUFFER_SIZE) {
        PyErr_SetString(PyExc_ValueError, "packet is too long");
        return NULL;
    }
    memcpy(buffer, PyBytes_AS_STRING(args[2]), (size_t)length);
    int len = (int)length;
    int status = fn(session, buffer, &len);
    if (status != 0) {
        PyErr_Format(srtp_error != NULL ? srtp_error : PyExc_RuntimeError, "srtp_unprotect failed with status %d",
                     status);
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)buffer, len);
}

/* sockaddr(host, port) -> bytes: a struct sockaddr_in / sockaddr_in6 for send_rtp, or None if
 * host is not a numeric address this helper takes (e.g. a scoped IPv6 link-local one). */
static PyObject *make_sockaddr(PyObject *self, PyObject *args) {
    const char *host;
    int port;
    if (!PyArg_ParseTuple(args, "si", &host, &port))
        return NULL;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return NULL;
    }
    struct sockaddr_in v4;
    memset(&v4, 0, sizeof v4);
    if (inet_pton(AF_INET, host, &v4.sin_addr) == 1) {
        v4.sin_family = AF_INET;
        v4.sin_port = htons((uint16_t)port);
        return PyBytes_FromStringAndSize((const char *)&v4, sizeof v4);
    }
    struct sockaddr_in6 v6;
    memset(&v6, 0, sizeof v6);
    if (inet_pton(AF_INET6, host, &v6.sin6_addr) == 1) {
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons((uint16_t)port);
        return PyBytes_FromStringAndSize((const char *)&v6, sizeof v6);
    }
    Py_RETURN_NONE;
}

static PyObject *set_error(PyObject *self, PyObject *cls) {
    Py_XINCREF(cls);
    Py_XSETREF(srtp_error, cls);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"send_rtp", (PyCFunction)(void (*)(void))send_rtp, METH_FASTCALL,
     "send_rtp(protect, session, fd, sockaddr, head, data, start, end): protect head + data[start:end] "
     "and send it"},
    {"forward", (PyCFunction)(void (*)(void))forward, METH_FASTCALL,
     "forward(rewriter, data, header, abs_send_time, audio_level, now, protect, session, fd, sockaddr): "
     "the rewriter's fast path, protect and send; None if not the fast path"},
    {"bind_rewriter", bind_rewriter, METH_VARARGS, "bind_rewriter(cls, max_sequence_step)"},
    {"unprotect", (PyCFunction)(void (*)(void))unprotect, METH_FASTCALL,
     "unprotect(unprotect_fn, session, data): the RTP packet in an SRTP datagram"},
    {"sockaddr", make_sockaddr, METH_VARARGS, "sockaddr(host, port) -> bytes or None"},
    {"set_error", set_error, METH_O, "the exception class raised when libsrtp refuses a packet"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastpath", "The forwarding core's native send (rewrite join, SRTP protect, sendto).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__fastpath(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "MAX_PACKET", BUFFER_SIZE - MAX_TRAILER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
