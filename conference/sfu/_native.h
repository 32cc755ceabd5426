/* What the forwarding core's two native helpers (_fastpath.c, the send side; _fastrecv.c, the
 * receive side) share. Each is a module of its own: every definition here is static, one copy per
 * module, included after <Python.h> and <structmember.h>. */

#ifndef CONFERENCE_NATIVE_H
#define CONFERENCE_NATIVE_H

/* pylibsrtp's own limit: a 1500-byte buffer (longer packets are refused, as it refuses them). */
#define BUFFER_SIZE 1500

/* srtp_protect, srtp_unprotect and srtp_protect_rtcp of the libsrtp copy pylibsrtp loaded: the
 * caller passes their addresses (libsrtp is not linked here). */
typedef int (*srtp_fn)(void *ctx, void *header, int *len_ptr);

/* The one packet being worked on (the event loop's thread only: the GIL is held throughout). */
static unsigned char buffer[BUFFER_SIZE] __attribute__((aligned(16)));

static PyObject *srtp_error = NULL; /* pylibsrtp.Error, set by set_error() */

/* libsrtp refused a packet: pylibsrtp.Error (RuntimeError before set_error) with its status. */
static void srtp_failed(const char *what, int status) {
    PyErr_Format(srtp_error != NULL ? srtp_error : PyExc_RuntimeError, "%s failed with status %d", what, status);
}

/* set_error(cls): the exception class raised when libsrtp refuses a packet. */
static PyObject *set_error(PyObject *self, PyObject *cls) {
    Py_XINCREF(cls);
    Py_XSETREF(srtp_error, cls);
    Py_RETURN_NONE;
}

/* The offsets of a class's object slots (its __slots__ member descriptors) by name, so that C reads
 * and writes them where they are. */
static int slot_offsets_of(PyObject *cls, const char **names, int count, Py_ssize_t *offsets) {
    PyObject *dict = ((PyTypeObject *)cls)->tp_dict;
    for (int i = 0; i < count; i++) {
        PyObject *descr = PyDict_GetItemString(dict, names[i]);
        if (descr == NULL || Py_TYPE(descr) != &PyMemberDescr_Type ||
            ((PyMemberDescrObject *)descr)->d_member->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "%s is not an object slot of %s", names[i], ((PyTypeObject *)cls)->tp_name);
            return -1;
        }
        offsets[i] = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    return 0;
}

#endif
