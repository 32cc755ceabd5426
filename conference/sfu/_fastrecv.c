/* The forwarding core's native receive side: what runs per incoming SRTP datagram before the
 * producer, and the transport-cc feedback built from it.
 *
 * - rtp_in(): one call from the socket hook (aiortc_glue.SrtpDatagramHook) unprotects the datagram
 *   with the leg's libsrtp session, reads the kernel's receive time (SIOCGSTAMP), parses the RTP
 *   header into a conference.sfu.packet.RtpHeader and notes the packet's transport-wide sequence
 *   number in the leg's twcc.TransportCcReceiver (on its own slots). In Python that was five calls:
 *   pylibsrtp (or _fastpath.unprotect), fcntl.ioctl + struct, parse_header, TransportCcReceiver.add
 *   with find_extension.
 * - twcc_feedback(): TransportCcReceiver.feedback's packets (twcc.encode_feedback's encoding).
 *
 * The Python code stays the reference and the path without a compiler: tests/test_fastrecv.py
 * compares headers, receiver state and feedback bytes with it. libsrtp is not linked: the caller
 * passes srtp_unprotect's address from the library pylibsrtp loaded, and its session handle, as
 * for _fastpath.c. Kept apart from _fastpath.c (the send side) so the two change independently. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <linux/sockios.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/time.h>

#include <structmember.h>

#include "_native.h"

static PyTypeObject *header_type = NULL; /* packet.RtpHeader */

/* --- TransportCcReceiver's slots ------------------------------------------------------------ */

enum { T_ARRIVALS, T_SEQS, T_HIGHEST, T_START, T_EXT_ID, T_PACKETS, T_COUNT_ };
static const char *twcc_slot_names[T_COUNT_] = {"_arrivals", "_seqs", "_highest", "_start", "ext_id", "packets"};
static PyTypeObject *twcc_type = NULL;
static Py_ssize_t twcc_offsets[T_COUNT_];
static long long twcc_ring = 0;           /* twcc._RING */
static long long twcc_rereport = 0;       /* twcc.REREPORT_WINDOW */
#define TSLOT(obj, i) (*(PyObject **)((char *)(obj) + twcc_offsets[i]))

/* bind(header_cls, twcc_cls, ring, rereport_window): packet.RtpHeader, twcc.TransportCcReceiver,
 * twcc._RING and twcc.REREPORT_WINDOW. */
static PyObject *bind(PyObject *self, PyObject *args) {
    PyObject *header_cls, *twcc_cls;
    long long ring, rereport;
    if (!PyArg_ParseTuple(args, "O!O!LL", &PyType_Type, &header_cls, &PyType_Type, &twcc_cls, &ring, &rereport))
        return NULL;
    PyTypeObject *ht = (PyTypeObject *)header_cls;
    if (!PyType_IsSubtype(ht, &PyTuple_Type) || ht->tp_basicsize != PyTuple_Type.tp_basicsize ||
        ht->tp_itemsize != PyTuple_Type.tp_itemsize || ht->tp_dictoffset != 0) {
        PyErr_SetString(PyExc_TypeError, "the header class must be a plain tuple subclass (a NamedTuple)");
        return NULL;
    }
    if (ring <= 0 || (ring & (ring - 1))) {
        PyErr_SetString(PyExc_ValueError, "ring must be a power of two");
        return NULL;
    }
    if (slot_offsets_of(twcc_cls, twcc_slot_names, T_COUNT_, twcc_offsets) < 0)
        return NULL;
    Py_INCREF(header_cls);
    Py_XSETREF(header_type, (PyTypeObject *)header_cls);
    Py_INCREF(twcc_cls);
    Py_XSETREF(twcc_type, (PyTypeObject *)twcc_cls);
    twcc_ring = ring;
    twcc_rereport = rereport;
    Py_RETURN_NONE;
}

/* --- RTP header (packet.parse_header) ------------------------------------------------------- */

typedef struct {
    long marker, payload_type, sequence;
    unsigned long timestamp, ssrc;
    long ext_profile, ext_offset, ext_length, payload_offset, payload_end;
} rtp_header;

static inline unsigned be16(const unsigned char *p) { return ((unsigned)p[0] << 8) | p[1]; }
static inline unsigned long be32(const unsigned char *p) {
    return ((unsigned long)p[0] << 24) | ((unsigned long)p[1] << 16) | ((unsigned long)p[2] << 8) | p[3];
}

/* parse_header's rules; 0 if not a well-formed RTP v2 packet. */
static int parse(const unsigned char *d, long length, rtp_header *h) {
    if (length < 12)
        return 0;
    unsigned b0 = d[0], b1 = d[1];
    if (b0 >> 6 != 2)
        return 0;
    h->marker = b1 >> 7;
    h->payload_type = b1 & 0x7F;
    h->sequence = be16(d + 2);
    h->timestamp = be32(d + 4);
    h->ssrc = be32(d + 8);
    long pos = 12 + (long)(b0 & 0x0F) * 4;
    h->ext_profile = h->ext_offset = h->ext_length = 0;
    if (b0 & 0x10) {
        if (length < pos + 4)
            return 0;
        h->ext_profile = be16(d + pos);
        h->ext_offset = pos + 4;
        h->ext_length = (long)be16(d + pos + 2) * 4;
        pos = h->ext_offset + h->ext_length;
    }
    long end = length;
    if (b0 & 0x20) {
        unsigned pad = d[length - 1];
        end = length - pad;
        if (pad == 0 || end < pos)
            return 0;
    } else if (pos > length) {
        return 0;
    }
    h->payload_offset = pos;
    h->payload_end = end;
    return 1;
}

static PyObject *header_object(const rtp_header *h) {
    /* An RtpHeader (a NamedTuple: a tuple subclass with no dict), allocated as tuple.__new__ makes
     * one for it (tuple_subtype_new: tp_alloc with the items set). */
    PyObject *t = header_type->tp_alloc(header_type, 10);
    if (t == NULL)
        return NULL;
    PyObject *v[10] = {
        PyLong_FromLong(h->marker),        PyLong_FromLong(h->payload_type),   PyLong_FromLong(h->sequence),
        PyLong_FromUnsignedLong(h->timestamp), PyLong_FromUnsignedLong(h->ssrc), PyLong_FromLong(h->ext_profile),
        PyLong_FromLong(h->ext_offset),    PyLong_FromLong(h->ext_length),     PyLong_FromLong(h->payload_offset),
        PyLong_FromLong(h->payload_end),
    };
    int failed = 0;
    for (int i = 0; i < 10; i++) {
        if (v[i] == NULL)
            failed = 1;
        PyTuple_SET_ITEM(t, i, v[i]); /* NULL items are fine for the dealloc below */
    }
    if (failed) {
        Py_DECREF(t);
        return NULL;
    }
    return t;
}

/* packet._find_extension: (offset, size) of element id's value, or offset -1. */
static long find_extension(const unsigned char *d, const rtp_header *h, long id, long *size) {
    long pos = h->ext_offset, end = pos + h->ext_length;
    *size = 0;
    if (h->ext_profile == 0xBEDE) {
        while (pos < end) {
            unsigned b = d[pos];
            if (b == 0) {
                pos++;
                continue;
            }
            long x_id = b >> 4;
            if (x_id == 15)
                break;
            long s = (b & 0x0F) + 1;
            if (x_id == id) {
                if (pos + 1 + s <= end) {
                    *size = s;
                    return pos + 1;
                }
                return -1;
            }
            pos += 1 + s;
        }
    } else if ((h->ext_profile & 0xFFF0) == 0x1000) {
        while (pos < end) {
            long x_id = d[pos];
            if (x_id == 0) {
                pos++;
                continue;
            }
            if (pos + 2 > end)
                break;
            long s = d[pos + 1];
            if (x_id == id) {
                if (pos + 2 + s <= end) {
                    *size = s;
                    return pos + 2;
                }
                return -1;
            }
            pos += 2 + s;
        }
    }
    return -1;
}

static int slot_ll(PyObject *obj, int i, long long *out) {
    PyObject *v = TSLOT(obj, i);
    if (v == NULL || !PyLong_Check(v)) {
        PyErr_SetString(PyExc_TypeError, "a transport-cc receiver slot is not an int");
        return -1;
    }
    *out = PyLong_AsLongLong(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int set_ll(PyObject *obj, int i, long long value) {
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL)
        return -1;
    Py_XSETREF(TSLOT(obj, i), v);
    return 0;
}

/* An int64 array.array's items (the receiver's ring), or NULL with an error. */
static long long *ring_items(PyObject *arr, Py_buffer *view) {
    if (PyObject_GetBuffer(arr, view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0)
        return NULL;
    if (view->itemsize != 8 || view->format == NULL || strcmp(view->format, "q") != 0 ||
        view->len != twcc_ring * 8) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_TypeError, "the transport-cc ring is not an int64 array of _RING items");
        return NULL;
    }
    return (long long *)view->buf;
}

/* TransportCcReceiver.add on the receiver's slots. 0 ok, -1 error. */
static int twcc_add(PyObject *rx, const unsigned char *d, const rtp_header *h, long long arrival_us) {
    if (!h->ext_length)
        return 0;
    long long ext_id;
    if (slot_ll(rx, T_EXT_ID, &ext_id) < 0)
        return -1;
    long size;
    long pos = find_extension(d, h, (long)ext_id, &size);
    if (pos < 0 || size != 2)
        return 0;
    long long seq = be16(d + pos), highest, start, unwrapped;
    if (slot_ll(rx, T_HIGHEST, &highest) < 0 || slot_ll(rx, T_START, &start) < 0)
        return -1;
    if (highest < 0) {
        highest = start = unwrapped = seq + 0x10000;
        if (set_ll(rx, T_HIGHEST, highest) < 0 || set_ll(rx, T_START, start) < 0)
            return -1;
    } else {
        long long delta = (seq - highest) & 0xFFFF;
        if (delta < 0x8000) {
            unwrapped = highest + delta;
            if (set_ll(rx, T_HIGHEST, unwrapped) < 0)
                return -1;
        } else {
            unwrapped = highest + delta - 0x10000;
            if (unwrapped < start) {
                if (start - unwrapped > twcc_rereport)
                    return 0;
                if (set_ll(rx, T_START, unwrapped) < 0)
                    return -1;
            }
        }
    }
    Py_buffer av, sv;
    long long *arrivals = ring_items(TSLOT(rx, T_ARRIVALS), &av);
    if (arrivals == NULL)
        return -1;
    long long *seqs = ring_items(TSLOT(rx, T_SEQS), &sv);
    if (seqs == NULL) {
        PyBuffer_Release(&av);
        return -1;
    }
    long long i = unwrapped & (twcc_ring - 1);
    arrivals[i] = arrival_us;
    seqs[i] = unwrapped;
    PyBuffer_Release(&sv);
    PyBuffer_Release(&av);
    long long packets;
    if (slot_ll(rx, T_PACKETS, &packets) < 0)
        return -1;
    return set_ll(rx, T_PACKETS, packets + 1);
}

/* rtp_in(unprotect, session, data, fd, twcc) -> (packet, header, arrival_us)
 *   unprotect, session: srtp_unprotect's address and the leg's rx srtp_t (ints)
 *   fd:   the socket the datagram came from, for its kernel receive time; -1: none wanted
 *   twcc: the leg's TransportCcReceiver, or None
 * header is None when the packet is not well-formed RTP (parse_header's None); arrival_us is the
 * kernel's receive time (wall clock, microseconds), -1 when fd < 0 or the kernel cannot tell (then
 * the caller's clock goes to the transport-cc receiver, as the Python hook does). Raises
 * pylibsrtp.Error when libsrtp refuses the datagram, ValueError when it is longer than pylibsrtp
 * takes. */
static PyObject *rtp_in(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "rtp_in takes 5 arguments");
        return NULL;
    }
    srtp_fn fn = (srtp_fn)PyLong_AsVoidPtr(args[0]);
    void *session = PyLong_AsVoidPtr(args[1]);
    long fd = PyLong_AsLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    PyObject *data = args[2], *twcc = args[4];
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "data must be bytes");
        return NULL;
    }
    if (fn == NULL || session == NULL || header_type == NULL) {
        PyErr_SetString(PyExc_ValueError, "no SRTP session (or bind() not called)");
        return NULL;
    }
    if (twcc != Py_None && Py_TYPE(twcc) != twcc_type) {
        PyErr_SetString(PyExc_TypeError, "twcc must be a TransportCcReceiver or None");
        return NULL;
    }
    Py_ssize_t length = PyBytes_GET_SIZE(data);
    if (length > BUFFER_SIZE) {
        PyErr_SetString(PyExc_ValueError, "packet is too long");
        return NULL;
    }
    memcpy(buffer, PyBytes_AS_STRING(data), (size_t)length);
    int len = (int)length;
    int status = fn(session, buffer, &len);
    if (status != 0) {
        srtp_failed("srtp_unprotect", status);
        return NULL;
    }
    long long arrival = -1;
    if (fd >= 0) {
        struct timeval tv;
        if (ioctl((int)fd, SIOCGSTAMP, &tv) == 0)
            arrival = (long long)tv.tv_sec * 1000000 + tv.tv_usec;
    }
    PyObject *packet = PyBytes_FromStringAndSize((const char *)buffer, len);
    if (packet == NULL)
        return NULL;
    rtp_header h;
    PyObject *header;
    if (parse(buffer, len, &h)) {
        header = header_object(&h);
        if (header == NULL) {
            Py_DECREF(packet);
            return NULL;
        }
        if (twcc != Py_None) {
            long long at = arrival;
            if (at < 0) {
                struct timeval now;
                gettimeofday(&now, NULL); /* int(time.time() * 1e6), as the Python hook's fallback */
                at = (long long)now.tv_sec * 1000000 + now.tv_usec;
            }
            if (twcc_add(twcc, buffer, &h, at) < 0) {
                Py_DECREF(header);
                Py_DECREF(packet);
                return NULL;
            }
        }
    } else {
        header = Py_NewRef(Py_None);
    }
    PyObject *at = PyLong_FromLongLong(arrival);
    if (at == NULL) {
        Py_DECREF(header);
        Py_DECREF(packet);
        return NULL;
    }
    PyObject *out = PyTuple_New(3);
    if (out == NULL) {
        Py_DECREF(at);
        Py_DECREF(header);
        Py_DECREF(packet);
        return NULL;
    }
    PyTuple_SET_ITEM(out, 0, packet);
    PyTuple_SET_ITEM(out, 1, header);
    PyTuple_SET_ITEM(out, 2, at);
    return out;
}

/* --- transport-cc feedback (twcc.encode_feedback, libwebrtc's rtcp::TransportFeedback) ----------- */

#define MAX_STATUS 1000 /* twcc.MAX_STATUS_PER_PACKET */
#define DELTA_US 250
#define REFERENCE_US 64000LL
#define REFERENCE_WRAP_US (REFERENCE_US << 24)
#define MAX_RUN 0x1FFF
#define NOT_RECEIVED 0
#define SMALL 1
#define LARGE 2
#define ABSENT INT64_MIN

typedef struct { /* twcc._Chunks */
    int symbols[14];
    int size, all_same, has_large;
} chunks_t;

static void chunks_reset(chunks_t *c) {
    c->size = 0;
    c->all_same = 1;
    c->has_large = 0;
}
static int chunks_can_add(const chunks_t *c, int symbol) {
    if (c->size < 7)
        return 1;
    if (c->size < 14 && !c->has_large && symbol != LARGE)
        return 1;
    return c->size < MAX_RUN && c->all_same && c->symbols[0] == symbol;
}
static void chunks_add(chunks_t *c, int symbol) {
    if (c->size < 14)
        c->symbols[c->size] = symbol;
    c->size++;
    c->all_same = c->all_same && symbol == c->symbols[0];
    c->has_large = c->has_large || symbol == LARGE;
}
static unsigned run_length(const chunks_t *c) { return ((unsigned)c->symbols[0] << 13) | (unsigned)c->size; }
static unsigned one_bit(const chunks_t *c) {
    unsigned chunk = 0x8000;
    int n = c->size < 14 ? c->size : 14;
    for (int i = 0; i < n; i++)
        chunk |= (unsigned)c->symbols[i] << (13 - i);
    return chunk;
}
static unsigned two_bit(const chunks_t *c, int size) {
    unsigned chunk = 0xC000;
    for (int i = 0; i < size; i++)
        chunk |= (unsigned)c->symbols[i] << (2 * (6 - i));
    return chunk;
}
static unsigned chunks_emit(chunks_t *c) {
    unsigned chunk;
    if (c->all_same) {
        chunk = run_length(c);
        chunks_reset(c);
        return chunk;
    }
    if (c->size == 14) {
        chunk = one_bit(c);
        chunks_reset(c);
        return chunk;
    }
    chunk = two_bit(c, 7);
    int rest[14], n = c->size - 7;
    for (int i = 0; i < n; i++)
        rest[i] = c->symbols[7 + i];
    chunks_reset(c);
    for (int i = 0; i < n; i++)
        chunks_add(c, rest[i]);
    return chunk;
}
static unsigned chunks_last(const chunks_t *c) {
    if (c->all_same)
        return run_length(c);
    if (c->size <= 7)
        return two_bit(c, c->size);
    return one_bit(c);
}

static inline void put16(unsigned char *p, unsigned v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}
static inline void put32(unsigned char *p, unsigned long v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* encode_feedback over arrivals[0:n] (ABSENT: not received; at least one received). Returns the
 * packet (bytes) and sets *covered. */
static PyObject *encode(unsigned long sender, unsigned long media, long long base, long long count,
                        const long long *arrivals, long n, long *covered) {
    long long first = ABSENT;
    for (long i = 0; i < n; i++)
        if (arrivals[i] != ABSENT) {
            first = arrivals[i];
            break;
        }
    /* Python's floor modulo (arrival times are positive, but keep its meaning). */
    long long wrapped = first % REFERENCE_WRAP_US;
    if (wrapped < 0)
        wrapped += REFERENCE_WRAP_US;
    long long reference = wrapped / REFERENCE_US;
    long long last_us = first - wrapped + reference * REFERENCE_US;
    unsigned encoded[MAX_STATUS + 1];
    int n_encoded = 0;
    unsigned char deltas[2 * MAX_STATUS];
    int n_deltas = 0;
    chunks_t c;
    chunks_reset(&c);
    long done = 0;
    long limit = n < MAX_STATUS ? n : MAX_STATUS;
    for (long i = 0; i < limit; i++) {
        long long arrival = arrivals[i];
        int symbol;
        long long delta = 0;
        if (arrival == ABSENT) {
            symbol = NOT_RECEIVED;
        } else {
            long long full = arrival - last_us;
            full += full >= 0 ? DELTA_US / 2 : -(DELTA_US / 2);
            delta = full / DELTA_US; /* C++ division, truncating, as libwebrtc's */
            if (delta < -0x8000 || delta > 0x7FFF)
                break;
            symbol = (delta >= 0 && delta <= 0xFF) ? SMALL : LARGE;
        }
        if (!chunks_can_add(&c, symbol))
            encoded[n_encoded++] = chunks_emit(&c);
        chunks_add(&c, symbol);
        done++;
        if (arrival != ABSENT) {
            if (symbol == SMALL) {
                deltas[n_deltas++] = (unsigned char)delta;
            } else {
                put16(deltas + n_deltas, (unsigned)(delta & 0xFFFF));
                n_deltas += 2;
            }
            last_us += delta * DELTA_US;
        }
    }
    encoded[n_encoded++] = chunks_last(&c);
    long body = 2L * n_encoded + n_deltas;
    long padding = (4 - body % 4) % 4;
    long total = 20 + body + padding;
    PyObject *out = PyBytes_FromStringAndSize(NULL, total);
    if (out == NULL)
        return NULL;
    unsigned char *p = (unsigned char *)PyBytes_AS_STRING(out);
    p[0] = (unsigned char)((padding ? 0xA0 : 0x80) | 15);
    p[1] = 205;
    put16(p + 2, (unsigned)(total / 4 - 1));
    put32(p + 4, sender);
    put32(p + 8, media);
    put16(p + 12, (unsigned)(base & 0xFFFF));
    put16(p + 14, (unsigned)done);
    put32(p + 16, (unsigned long)(((reference & 0xFFFFFF) << 8) | (count & 0xFF)));
    unsigned char *q = p + 20;
    for (int i = 0; i < n_encoded; i++, q += 2)
        put16(q, encoded[i]);
    memcpy(q, deltas, (size_t)n_deltas);
    q += n_deltas;
    if (padding) {
        memset(q, 0, (size_t)padding - 1);
        q[padding - 1] = (unsigned char)padding;
    }
    *covered = done;
    return out;
}

/* twcc_feedback(receiver, sender_ssrc, media_ssrc, count) -> (packets, count): what
 * TransportCcReceiver.feedback sends for the arrivals since its last call, and the feedback
 * packet count after them; the receiver's _start moves past them (the caller keeps _count and
 * feedback_sent, as the Python method does). */
static PyObject *twcc_feedback(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "twcc_feedback takes 4 arguments");
        return NULL;
    }
    PyObject *rx = args[0];
    if (twcc_type == NULL || Py_TYPE(rx) != twcc_type) {
        PyErr_SetString(PyExc_TypeError, "receiver must be a TransportCcReceiver (bind() first)");
        return NULL;
    }
    unsigned long sender = PyLong_AsUnsignedLongMask(args[1]);
    unsigned long media = PyLong_AsUnsignedLongMask(args[2]);
    long long count = PyLong_AsLongLong(args[3]);
    if (PyErr_Occurred())
        return NULL;
    long long highest, start;
    if (slot_ll(rx, T_HIGHEST, &highest) < 0 || slot_ll(rx, T_START, &start) < 0)
        return NULL;
    PyObject *packets = PyList_New(0);
    if (packets == NULL)
        return NULL;
    if (highest < 0 || start > highest)
        goto done;
    if (highest - start >= twcc_ring)
        start = highest - twcc_ring + 1;
    long n = (long)(highest - start + 1);
    long long *window = PyMem_Malloc(sizeof(long long) * (size_t)n);
    if (window == NULL) {
        Py_DECREF(packets);
        return PyErr_NoMemory();
    }
    Py_buffer av, sv;
    long long *arrivals = ring_items(TSLOT(rx, T_ARRIVALS), &av);
    if (arrivals == NULL)
        goto fail_window;
    long long *seqs = ring_items(TSLOT(rx, T_SEQS), &sv);
    if (seqs == NULL) {
        PyBuffer_Release(&av);
        goto fail_window;
    }
    long received = 0;
    for (long k = 0; k < n; k++) {
        long long seq = start + k, i = seq & (twcc_ring - 1);
        window[k] = seqs[i] == seq ? arrivals[i] : ABSENT;
        received += window[k] != ABSENT;
    }
    PyBuffer_Release(&sv);
    PyBuffer_Release(&av);
    if (set_ll(rx, T_START, highest + 1) < 0)
        goto fail_window;
    long offset = 0;
    while (offset < n && received > 0) {
        long covered = 0;
        PyObject *packet = encode(sender, media, start + offset, count, window + offset, n - offset, &covered);
        if (packet == NULL || PyList_Append(packets, packet) < 0) {
            Py_XDECREF(packet);
            goto fail_window;
        }
        Py_DECREF(packet);
        count = (count + 1) & 0xFF;
        if (covered <= 0)
            break; /* cannot happen (a packet covers at least its first entry): no endless loop */
        for (long k = offset; k < offset + covered; k++)
            received -= window[k] != ABSENT;
        offset += covered;
    }
    PyMem_Free(window);
done:;
    PyObject *out = Py_BuildValue("(NL)", packets, count);
    return out;
fail_window:
    PyMem_Free(window);
    Py_DECREF(packets);
    return NULL;
}

static PyMethodDef methods[] = {
    {"bind", bind, METH_VARARGS, "bind(RtpHeader, TransportCcReceiver, ring, rereport_window)"},
    {"set_error", set_error, METH_O, "the exception class raised when libsrtp refuses a packet"},
    {"rtp_in", (PyCFunction)(void (*)(void))rtp_in, METH_FASTCALL,
     "rtp_in(unprotect, session, data, fd, twcc) -> (packet, header, arrival_us)"},
    {"twcc_feedback", (PyCFunction)(void (*)(void))twcc_feedback, METH_FASTCALL,
     "twcc_feedback(receiver, sender_ssrc, media_ssrc, count) -> (packets, count)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastrecv",
    "The forwarding core's native receive side (unprotect, header, transport-cc) and transport-cc feedback.", -1,
    methods,
};

PyMODINIT_FUNC PyInit__fastrecv(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "API", 1) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
