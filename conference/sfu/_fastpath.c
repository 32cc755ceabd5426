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
