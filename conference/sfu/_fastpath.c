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
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#include <structmember.h>

#include "_native.h"

/* pylibsrtp's SRTP_MAX_TRAILER_LEN (16 + 128), kept free in the buffer. */
#define MAX_TRAILER 144

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
    srtp_fn protect = (srtp_fn)PyLong_AsVoidPtr(args[0]);
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
        srtp_failed("srtp_protect", status);
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
 * VP8 with X and I and a 15-bit picture id), done on the rewriter's own state: its numbers in the
 * RewriterState struct below, its object slots (prefix, suffix, last_time, _twcc) by the offsets
 * bind_rewriter() takes once; only on an object of exactly that type. Anything else returns None and the caller takes the Python path,
 * which is the reference: tests/test_fastpath.py compares the datagrams and the slots' state. */

/* The rewriter's numbers live in the object itself (RewriterState, StreamRewriter's base when this
 * module is built): read and written in place on every copy, where int objects behind slots were
 * a pointer to chase each (a cache miss at 50 endpoints) and an allocation for each write. Python
 * sees them as attributes (member descriptors), as it saw the slots. */
typedef struct {
    PyObject_HEAD
    long long live, in_highest, seq_offset, ts_offset, payload_type, ssrc, pid_offset, last_timestamp,
        packets_sent, octets_sent, in_picture_id, tail, level_shift;
    unsigned long long tag, abs_mask, level_mask;
    char vp8;
    /* The SRTP session of this slot's SSRC on its leg, as the fan-out last found it in the leg's
     * _streams (held: while it is the leg's map, the sessions it names are alive). */
    PyObject *stream_map;
    long long stream_ssrc, stream_handle;
} RewriterState;

#define STATE_MEMBER(name, type, field) {name, type, offsetof(RewriterState, field), 0, NULL}
static PyMemberDef state_members[] = {
    STATE_MEMBER("_live", T_LONGLONG, live),
    STATE_MEMBER("in_highest", T_LONGLONG, in_highest),
    STATE_MEMBER("seq_offset", T_LONGLONG, seq_offset),
    STATE_MEMBER("ts_offset", T_LONGLONG, ts_offset),
    STATE_MEMBER("payload_type", T_LONGLONG, payload_type),
    STATE_MEMBER("ssrc", T_LONGLONG, ssrc),
    STATE_MEMBER("_pid_offset", T_LONGLONG, pid_offset),
    STATE_MEMBER("last_timestamp", T_LONGLONG, last_timestamp),
    STATE_MEMBER("packets_sent", T_LONGLONG, packets_sent),
    STATE_MEMBER("octets_sent", T_LONGLONG, octets_sent),
    STATE_MEMBER("in_picture_id", T_LONGLONG, in_picture_id),
    STATE_MEMBER("tail", T_LONGLONG, tail),
    STATE_MEMBER("_level_shift", T_LONGLONG, level_shift),
    STATE_MEMBER("_tag", T_ULONGLONG, tag),
    STATE_MEMBER("_abs_mask", T_ULONGLONG, abs_mask),
    STATE_MEMBER("_level_mask", T_ULONGLONG, level_mask),
    STATE_MEMBER("_vp8", T_BOOL, vp8),
    {NULL, 0, 0, 0, NULL},
};

static void state_dealloc(PyObject *self) {
    Py_CLEAR(((RewriterState *)self)->stream_map);
    Py_TYPE(self)->tp_free(self);
}

static PyTypeObject RewriterStateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "conference.sfu._fastpath.RewriterState",
    .tp_basicsize = sizeof(RewriterState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "StreamRewriter's numbers, held in C (rewriter.py's _PythonState is the same in Python)",
    .tp_new = PyType_GenericNew,
    .tp_dealloc = state_dealloc,
    .tp_members = state_members,
};

/* The rewriter's object slots (its __slots__), read where they are. */
enum { S_PREFIX, S_SUFFIX, S_LAST_TIME, S_TWCC, S_COUNT };
static const char *slot_names[S_COUNT] = {"_prefix", "_suffix", "last_time", "_twcc"};
static PyTypeObject *rewriter_type = NULL;
static Py_ssize_t slot_offsets[S_COUNT];
static long max_sequence_step = 0;

#define SLOT(obj, i) (*(PyObject **)((char *)(obj) + slot_offsets[i]))

/* The leg's transport-wide sequence (conference.downlink_estimate.SentPackets, shared by the leg's
 * slots): a stamped slot ORs next_seq into the extension word and notes (send time, size) in the
 * ring, as SentPackets.stamp does. */
enum { T_NEXT_SEQ, T_STAMPED, T_SENT, T_SIZES, T_SEQS, T_COUNT };
static const char *sent_slot_names[T_COUNT] = {"next_seq", "stamped", "_sent", "_sizes", "_seqs"};
static PyTypeObject *sent_type = NULL;
static Py_ssize_t sent_offsets[T_COUNT];

#define TSLOT(obj, i) (*(PyObject **)((char *)(obj) + sent_offsets[i]))


/* bind_rewriter(cls, max_sequence_step, sent_cls): the class whose slots forward() uses, and the
 * transport-wide sequence's (SentPackets). */
static PyObject *bind_rewriter(PyObject *self, PyObject *args) {
    PyObject *cls, *sent_cls;
    long step;
    if (!PyArg_ParseTuple(args, "O!lO!", &PyType_Type, &cls, &step, &PyType_Type, &sent_cls))
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)cls, &RewriterStateType)) {
        PyErr_SetString(PyExc_TypeError, "the rewriter's base is not RewriterState");
        return NULL;
    }
    if (slot_offsets_of(sent_cls, sent_slot_names, T_COUNT, sent_offsets) < 0)
        return NULL;
    Py_INCREF(sent_cls);
    Py_XSETREF(sent_type, (PyTypeObject *)sent_cls);
    if (slot_offsets_of(cls, slot_names, S_COUNT, slot_offsets) < 0)
        return NULL;
    Py_INCREF(cls);
    Py_XSETREF(rewriter_type, (PyTypeObject *)cls);
    max_sequence_step = step;
    Py_RETURN_NONE;
}

static int set_slot(PyObject *obj, int i, PyObject *value) { /* steals value */
    if (value == NULL)
        return -1;
    Py_XSETREF(SLOT(obj, i), value);
    return 0;
}

static PyObject *send_buffer(srtp_fn protect, void *session, long fd, PyObject *addr, Py_ssize_t length);

/* The header fields the fast path reads (RtpHeader's marker, sequence, timestamp, ssrc,
 * payload_offset, payload_end), once per packet. 0 if the header is not what the fast path takes. */
typedef struct {
    long long marker, seq, timestamp, ssrc, pos, end;
} header_fields;

static int read_header(PyObject *header, header_fields *h) {
    if (!PyTuple_Check(header) || PyTuple_GET_SIZE(header) != 10)
        return 0;
    static const int used[] = {0, 2, 3, 4, 8, 9};
    long long v[6];
    for (int k = 0; k < 6; k++) {
        PyObject *item = PyTuple_GET_ITEM(header, used[k]);
        if (!PyLong_Check(item))
            return 0;
        v[k] = PyLong_AsLongLong(item);
    }
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    h->marker = v[0], h->seq = v[1], h->timestamp = v[2], h->ssrc = v[3], h->pos = v[4], h->end = v[5];
    return 1;
}

/* One array slot of a SentPackets ring: its typed buffer, checked (itemsize, length). */
static int ring_store(PyObject *array, Py_ssize_t itemsize, Py_ssize_t i, long long value) {
    Py_buffer view;
    if (array == NULL || PyObject_GetBuffer(array, &view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0)
        return -1;
    int ok = view.itemsize == itemsize && i < view.len / itemsize;
    if (ok && itemsize == 8)
        ((int64_t *)view.buf)[i] = (int64_t)value;
    else if (ok)
        ((int32_t *)view.buf)[i] = (int32_t)value;
    PyBuffer_Release(&view);
    if (!ok)
        PyErr_SetString(PyExc_ValueError, "a SentPackets ring is not what _fastpath was bound for");
    return ok ? 0 : -1;
}

/* SentPackets.stamp(now, size) for the sequence number seq (its next_seq, read before). */
static int stamp_sent(PyObject *twcc, long long seq, PyObject *now, Py_ssize_t size) {
    long long stamped;
    PyObject *sizes = TSLOT(twcc, T_SIZES), *count = TSLOT(twcc, T_STAMPED);
    if (sizes == NULL || count == NULL || !PyLong_Check(count)) {
        PyErr_SetString(PyExc_TypeError, "SentPackets has no ring");
        return -1;
    }
    stamped = PyLong_AsLongLong(count);
    if (stamped == -1 && PyErr_Occurred())
        return -1;
    Py_buffer view;
    if (PyObject_GetBuffer(sizes, &view, PyBUF_SIMPLE) < 0)
        return -1;
    Py_ssize_t ring = view.len / 4;
    PyBuffer_Release(&view);
    if (ring <= 0 || (ring & (ring - 1))) {
        PyErr_SetString(PyExc_ValueError, "SentPackets' ring is not a power of two");
        return -1;
    }
    Py_ssize_t i = (Py_ssize_t)(seq & (ring - 1));
    long long send_us = (long long)(PyFloat_AS_DOUBLE(now) * 1e6); /* Python's int(now * 1e6) */
    if (ring_store(TSLOT(twcc, T_SENT), 8, i, send_us) < 0 || ring_store(sizes, 4, i, size) < 0 ||
        ring_store(TSLOT(twcc, T_SEQS), 4, i, seq) < 0)
        return -1;
    PyObject *next = PyLong_FromLongLong((seq + 1) & 0xFFFF), *total = PyLong_FromLongLong(stamped + 1);
    if (next == NULL || total == NULL) {
        Py_XDECREF(next);
        Py_XDECREF(total);
        return -1;
    }
    Py_XSETREF(TSLOT(twcc, T_NEXT_SEQ), next);
    Py_XSETREF(TSLOT(twcc, T_STAMPED), total);
    return 0;
}

/* rewrite_head's fast path into buffer, the slot's state updated as rewrite_head leaves it.
 * 1: buffer[0:*length] is the packet to protect; 0: not the fast path (nothing changed, the caller
 * takes the Python path); -1: an error is set. */
static int rewrite_fast(PyObject *rw, PyObject *data, const header_fields *h, long long ast, PyObject *level_obj,
                        PyObject *now, Py_ssize_t *length_out) {
    if (rewriter_type == NULL || Py_TYPE(rw) != rewriter_type || !PyBytes_Check(data) || !PyFloat_Check(now))
        return 0;
    RewriterState *st = (RewriterState *)rw;
    long long marker = h->marker, seq = h->seq, timestamp = h->timestamp, ssrc = h->ssrc, pos = h->pos,
              end = h->end;
    long long seq_offset = st->seq_offset, ts_offset = st->ts_offset, level_shift = st->level_shift;
    long long pt = st->payload_type, out_ssrc = st->ssrc;
    unsigned long long tag = st->tag, abs_mask = st->abs_mask, level_mask = st->level_mask;
    Py_ssize_t data_len = PyBytes_GET_SIZE(data);
    if (ssrc != st->live || ((seq - st->in_highest - 1) & 0xFFFF) >= max_sequence_step || end - pos < 5 ||
        pos < 0 || end > data_len)
        return 0;
    PyObject *prefix = SLOT(rw, S_PREFIX), *suffix = SLOT(rw, S_SUFFIX);
    if (prefix == NULL || !PyBytes_Check(prefix) || PyBytes_GET_SIZE(prefix) != 4 || suffix == NULL ||
        !PyBytes_Check(suffix) || level_shift < 0 || level_shift > 57)
        return 0;
    const unsigned char *in = (const unsigned char *)PyBytes_AS_STRING(data);
    int vp8 = st->vp8 != 0;
    long long pid = -1, pid_offset = st->pid_offset;
    if (vp8) {
        if (!((in[pos] & 0x80) && in[pos + 1] == 0x80 && (in[pos + 2] & 0x80)))
            return 0; /* another descriptor form: the Python path */
        pid = ((in[pos + 2] & 0x7F) << 8) | in[pos + 3];
    }
    Py_ssize_t suffix_len = PyBytes_GET_SIZE(suffix);
    long long tail = vp8 ? pos + 4 : pos;
    Py_ssize_t head_len = 24 + suffix_len + (vp8 ? 4 : 0);
    Py_ssize_t length = head_len + (Py_ssize_t)(end - tail);
    if (length > BUFFER_SIZE - MAX_TRAILER) {
        PyErr_SetString(PyExc_ValueError, "packet is too long");
        return -1;
    }
    unsigned long long word = tag | ((unsigned long long)ast & abs_mask);
    if (!vp8 && level_mask) {
        long long level = 127;
        if (level_obj != Py_None) {
            level = PyLong_AsLongLong(level_obj);
            if (level == -1 && PyErr_Occurred())
                return -1;
            level &= 0x7F;
        }
        word |= (unsigned long long)level << level_shift;
    }
    PyObject *twcc = SLOT(rw, S_TWCC);
    long long twcc_seq = -1;
    if (twcc == NULL)
        return 0;
    if (twcc != Py_None) {
        PyObject *next = sent_type != NULL && Py_TYPE(twcc) == sent_type ? TSLOT(twcc, T_NEXT_SEQ) : NULL;
        if (next == NULL || !PyLong_Check(next))
            return 0;
        twcc_seq = PyLong_AsLongLong(next);
        if (twcc_seq < 0 || twcc_seq > 0xFFFF) {
            PyErr_Clear();
            return 0;
        }
        word |= (unsigned long long)twcc_seq; /* the word's last two bytes (packet._extension_block) */
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
    Py_INCREF(now);
    if (set_slot(rw, S_LAST_TIME, now))
        return -1;
    st->in_highest = seq;
    st->last_timestamp = (long long)out_ts;
    st->packets_sent += 1;
    st->octets_sent += end - pos;
    st->tail = tail;
    if (vp8)
        st->in_picture_id = pid;
    if (twcc_seq >= 0 && stamp_sent(twcc, twcc_seq, now, length) < 0)
        return -1;
    *length_out = length;
    return 1;
}

/* forward(rewriter, data, header, abs_send_time, audio_level, now, protect, session, fd, sockaddr):
 * rewrite_head's fast path + protect + send. None: not the fast path (nothing done, the caller
 * rewrites in Python); else what send_rtp returns. */
static PyObject *forward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "forward takes 10 arguments");
        return NULL;
    }
    header_fields h;
    if (!read_header(args[2], &h))
        Py_RETURN_NONE;
    long long ast = PyLong_AsLongLong(args[3]);
    if (ast == -1 && PyErr_Occurred())
        return NULL;
    Py_ssize_t length;
    int fast = rewrite_fast(args[0], args[1], &h, ast, args[4], args[5], &length);
    if (fast < 0)
        return NULL;
    if (fast == 0)
        Py_RETURN_NONE;
    srtp_fn protect = (srtp_fn)PyLong_AsVoidPtr(args[6]);
    void *session = PyLong_AsVoidPtr(args[7]);
    long fd = PyLong_AsLong(args[8]);
    if (PyErr_Occurred())
        return NULL;
    if (!as_bytes(args[9], "sockaddr"))
        return NULL;
    return send_buffer(protect, session, fd, args[9], length);
}

/* Protect buffer[0:length] in place and send it (send_rtp's second half). */
static PyObject *send_buffer(srtp_fn protect, void *session, long fd, PyObject *addr, Py_ssize_t length) {
    if (protect == NULL || session == NULL) {
        PyErr_SetString(PyExc_ValueError, "no SRTP session");
        return NULL;
    }
    int len = (int)length;
    int status = protect(session, buffer, &len);
    if (status != 0) {
        srtp_failed("srtp_protect", status);
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

/* --- a producer's fan-out --------------------------------------------------------------------
 * Producer.receive's loop over its consumers for one packet, in one call: for each down-track
 * whose output is a native LegOutput with its SRTP context, nominated pair and socket as the leg
 * resolved them last (the checks LegOutput.forward makes), rewrite (the fast path above), protect
 * and send here; every other track (another output, a leg that changed, a packet off the fast
 * path) goes to the Python fallback, which is the reference. The tracks are the producer's own
 * list, read as it is at each step (a fallback may change it, as in a Python for loop). */

/* The counters of a leg (LegOutput's base) and of a down-track (DownTrack's), held in C as the
 * rewriter's numbers are: a copy counts without allocating an int. */
typedef struct {
    PyObject_HEAD
    long long packets, octets, send_errors;
} LegState;

static PyMemberDef leg_state_members[] = {
    {"packets", T_LONGLONG, offsetof(LegState, packets), 0, NULL},
    {"octets", T_LONGLONG, offsetof(LegState, octets), 0, NULL},
    {"send_errors", T_LONGLONG, offsetof(LegState, send_errors), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject LegStateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "conference.sfu._fastpath.LegState",
    .tp_basicsize = sizeof(LegState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "LegOutput's counters, held in C (aiortc_glue._PythonLegState is the same in Python)",
    .tp_new = PyType_GenericNew,
    .tp_members = leg_state_members,
};

typedef struct {
    PyObject_HEAD
    long long packets;
} TrackState;

static PyMemberDef track_state_members[] = {
    {"packets", T_LONGLONG, offsetof(TrackState, packets), 0, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject TrackStateType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "conference.sfu._fastpath.TrackState",
    .tp_basicsize = sizeof(TrackState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "DownTrack's count of copies sent, held in C (consumer._PythonTrackState in Python)",
    .tp_new = PyType_GenericNew,
    .tp_members = track_state_members,
};

enum {
    L_ADDR, L_FD, L_HANDLE, L_NOMINATED, L_PAIR, L_SOCKADDR, L_SRTP, L_STREAMS, L_TRANSPORT, L_NATIVE, L_COUNT
};
static const char *leg_slot_names[L_COUNT] = {
    "_addr", "_fd", "_handle", "_nominated", "_pair", "_sockaddr", "_srtp", "_streams", "_transport", "native",
};
static PyTypeObject *leg_type = NULL;
static Py_ssize_t leg_offsets[L_COUNT];
static srtp_fn leg_protect = NULL;
static unsigned long long fast_copies = 0; /* copies the fan-out sent itself (tests, counters()) */
static PyObject *str_rewriter, *str_output, *str_is_closing, *str_sendto,
    *str_packets, *one;

#define LSLOT(obj, i) (*(PyObject **)((char *)(obj) + leg_offsets[i]))

/* The down-track class (consumer.DownTrack) whose slots the fan-out reads where they are. */
enum { K_OUTPUT, K_REWRITER, K_COUNT };
static const char *track_slot_names[K_COUNT] = {"output", "rewriter"};
static PyTypeObject *track_type = NULL;
static Py_ssize_t track_offsets[K_COUNT];

#define KSLOT(obj, i) (*(PyObject **)((char *)(obj) + track_offsets[i]))

/* bind_leg(cls, protect): the leg class whose slots fan_out() reads, and srtp_protect's address. */
static PyObject *bind_leg(PyObject *self, PyObject *args) {
    PyObject *cls, *address;
    if (!PyArg_ParseTuple(args, "O!O", &PyType_Type, &cls, &address))
        return NULL;
    srtp_fn protect = (srtp_fn)PyLong_AsVoidPtr(address);
    if (PyErr_Occurred())
        return NULL;
    if (!PyType_IsSubtype((PyTypeObject *)cls, &LegStateType)) {
        PyErr_SetString(PyExc_TypeError, "the leg's base is not LegState");
        return NULL;
    }
    if (slot_offsets_of(cls, leg_slot_names, L_COUNT, leg_offsets) < 0)
        return NULL;
    Py_INCREF(cls);
    Py_XSETREF(leg_type, (PyTypeObject *)cls);
    leg_protect = protect;
    Py_RETURN_NONE;
}

/* bind_track(cls): the down-track class whose slots fan_out() reads. */
static PyObject *bind_track(PyObject *self, PyObject *cls) {
    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, &TrackStateType)) {
        PyErr_SetString(PyExc_TypeError, "bind_track takes a subclass of TrackState");
        return NULL;
    }
    if (slot_offsets_of(cls, track_slot_names, K_COUNT, track_offsets) < 0)
        return NULL;
    Py_INCREF(cls);
    Py_XSETREF(track_type, (PyTypeObject *)cls);
    Py_RETURN_NONE;
}

/* A down-track's slot (a new reference), or its attribute if the track is of another class. */
static PyObject *track_get(PyObject *track, int i, PyObject *name) {
    if (Py_TYPE(track) != track_type)
        return PyObject_GetAttr(track, name);
    PyObject *value = KSLOT(track, i);
    if (value == NULL) {
        PyErr_SetObject(PyExc_AttributeError, name);
        return NULL;
    }
    Py_INCREF(value);
    return value;
}

/* Whether the leg may send natively now, as LegOutput.forward checks it: 1 yes, 0 no (the
 * fallback re-resolves it), -1 error. Its SRTP context is the one the leg was told of
 * (outbound_context_changed: aiortc sets it only as the handshake ends); the nominated pair is
 * read from aioice's own dict, which the leg holds. */
static int leg_ready(PyObject *leg) {
    PyObject *srtp = LSLOT(leg, L_SRTP), *sockaddr = LSLOT(leg, L_SOCKADDR);
    PyObject *nominated = LSLOT(leg, L_NOMINATED), *pair = LSLOT(leg, L_PAIR);
    PyObject *transport = LSLOT(leg, L_TRANSPORT);
    if (LSLOT(leg, L_NATIVE) != Py_True || srtp == NULL || srtp == Py_None || sockaddr == NULL ||
        !PyBytes_Check(sockaddr) || nominated == NULL || !PyDict_CheckExact(nominated) || pair == NULL ||
        transport == NULL || transport == Py_None)
        return 0;
    PyObject *current = PyDict_GetItemWithError(nominated, one);
    if (current != pair)
        return PyErr_Occurred() ? -1 : 0;
    PyObject *closing = PyObject_CallMethodNoArgs(transport, str_is_closing);
    if (closing == NULL)
        return -1;
    Py_DECREF(closing);
    return closing == Py_False;
}

/* One track's copy natively: 1 sent, 0 not taken (nothing changed), -1 error. The copy is protected
 * on its SSRC's own session (the leg's _streams); an SSRC without one yet goes to the fallback,
 * which makes it. */
static int fan_out_one(PyObject *track, PyObject *data, const header_fields *h, long long ast, PyObject *level,
                       PyObject *now) {
    PyObject *leg = track_get(track, K_OUTPUT, str_output);
    if (leg == NULL)
        return -1;
    int result = 0;
    PyObject *rw = NULL;
    if (Py_TYPE(leg) != leg_type)
        goto done;
    result = leg_ready(leg);
    if (result <= 0)
        goto done;
    rw = track_get(track, K_REWRITER, str_rewriter);
    if (rw == NULL) {
        result = -1;
        goto done;
    }
    long long handle, fd;
    PyObject *streams = LSLOT(leg, L_STREAMS), *fd_obj = LSLOT(leg, L_FD);
    if (Py_TYPE(rw) != rewriter_type || streams == NULL || !PyDict_CheckExact(streams) || fd_obj == NULL ||
        !PyLong_Check(fd_obj)) {
        result = 0;
        goto done;
    }
    RewriterState *st = (RewriterState *)rw;
    if (st->stream_map == streams && st->stream_ssrc == st->ssrc) {
        handle = st->stream_handle;
    } else {
        PyObject *ssrc = PyLong_FromLongLong(st->ssrc);
        PyObject *handle_obj = ssrc == NULL ? NULL : PyDict_GetItemWithError(streams, ssrc);
        Py_XDECREF(ssrc);
        if (handle_obj == NULL || !PyLong_Check(handle_obj)) {
            result = PyErr_Occurred() ? -1 : 0; /* no session yet: the fallback makes it */
            goto done;
        }
        handle = PyLong_AsLongLong(handle_obj);
        if (handle == -1 && PyErr_Occurred()) {
            result = -1;
            goto done;
        }
        Py_INCREF(streams);
        Py_XSETREF(st->stream_map, streams);
        st->stream_ssrc = st->ssrc;
        st->stream_handle = handle;
    }
    fd = PyLong_AsLongLong(fd_obj);
    if (PyErr_Occurred() || handle == 0 || fd < 0) {
        PyErr_Clear();
        result = 0;
        goto done;
    }
    Py_ssize_t length;
    result = rewrite_fast(rw, data, h, ast, level, now, &length);
    if (result <= 0)
        goto done;
    int len = (int)length;
    int status = leg_protect((void *)(uintptr_t)handle, buffer, &len);
    if (status != 0) {
        srtp_failed("srtp_protect", status);
        result = -1;
        goto done;
    }
    PyObject *addr = LSLOT(leg, L_SOCKADDR);
    ssize_t sent = sendto((int)fd, buffer, (size_t)len, 0, (const struct sockaddr *)PyBytes_AS_STRING(addr),
                          (socklen_t)PyBytes_GET_SIZE(addr));
    if (sent < 0) {
        int err = errno;
        if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS || err == EINTR) {
            /* The socket's buffer is full: the transport queues the protected datagram, as it would. */
            PyObject *datagram = PyBytes_FromStringAndSize((const char *)buffer, len);
            PyObject *queued = datagram == NULL ? NULL
                                                : PyObject_CallMethodObjArgs(LSLOT(leg, L_TRANSPORT), str_sendto,
                                                                             datagram, LSLOT(leg, L_ADDR), NULL);
            Py_XDECREF(datagram);
            if (queued == NULL) {
                result = -1;
                goto done;
            }
            Py_DECREF(queued);
            sent = len;
        } else {
            ((LegState *)leg)->send_errors += 1;
            sent = 0;
        }
    }
    ((LegState *)leg)->packets += 1;
    ((LegState *)leg)->octets += sent;
    /* track.packets += 1, as the Python loop counts a sent copy */
    if (Py_TYPE(track) == track_type) {
        ((TrackState *)track)->packets += 1;
    } else {
        PyObject *count = PyObject_GetAttr(track, str_packets);
        PyObject *next = count == NULL ? NULL : PyNumber_Add(count, one);
        Py_XDECREF(count);
        if (next == NULL || PyObject_SetAttr(track, str_packets, next) < 0)
            result = -1;
        Py_XDECREF(next);
    }
    fast_copies += result > 0;
done:
    Py_XDECREF(rw);
    Py_DECREF(leg);
    return result;
}

/* fan_out(tracks, data, header, abs_send_time, audio_level, keyframe, now, fallback) -> int:
 * the copies of one packet to every down-track in the list; fallback(track, data, header,
 * abs_send_time, audio_level, keyframe, now) -> bool sends a track's copy in Python. Returns how
 * many copies were sent. */
static PyObject *fan_out(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "fan_out takes 8 arguments");
        return NULL;
    }
    PyObject *tracks = args[0], *data = args[1], *fallback = args[7];
    if (!PyList_Check(tracks)) {
        PyErr_SetString(PyExc_TypeError, "tracks must be a list");
        return NULL;
    }
    header_fields h;
    int fast_header = read_header(args[2], &h) && PyBytes_Check(data) && leg_type != NULL && leg_protect != NULL;
    long long ast = 0;
    if (fast_header) {
        ast = PyLong_AsLongLong(args[3]);
        if (ast == -1 && PyErr_Occurred())
            return NULL;
    }
    long sent = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(tracks); i++) {
        PyObject *track = PyList_GET_ITEM(tracks, i);
        Py_INCREF(track);
        int done = fast_header ? fan_out_one(track, data, &h, ast, args[4], args[6]) : 0;
        if (done == 0) {
            PyObject *call_args[7] = {track, data, args[2], args[3], args[4], args[5], args[6]};
            PyObject *ok = PyObject_Vectorcall(fallback, call_args, 7, NULL);
            if (ok == NULL) {
                Py_DECREF(track);
                return NULL;
            }
            done = PyObject_IsTrue(ok);
            Py_DECREF(ok);
        }
        Py_DECREF(track);
        if (done < 0)
            return NULL;
        sent += done;
    }
    return PyLong_FromLong(sent);
}

static PyObject *counters(PyObject *self, PyObject *unused) {
    return Py_BuildValue("{s:K}", "fast_copies", fast_copies);
}

/* unprotect(unsrtp_fn, session, data) -> bytes: the RTP packet in an SRTP datagram, as
 * pylibsrtp's Session.unprotect gives it (one copy in, one out, no per-call allocation besides the
 * result). Raises pylibsrtp.Error if libsrtp refuses it (authentication, replay), ValueError if it
 * is longer than pylibsrtp's buffer. */
static PyObject *unprotect(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "unprotect takes 3 arguments");
        return NULL;
    }
    srtp_fn fn = (srtp_fn)PyLong_AsVoidPtr(args[0]);
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
        srtp_failed("srtp_unprotect", status);
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

static PyMethodDef methods[] = {
    {"send_rtp", (PyCFunction)(void (*)(void))send_rtp, METH_FASTCALL,
     "send_rtp(protect, session, fd, sockaddr, head, data, start, end): protect head + data[start:end] "
     "and send it"},
    {"forward", (PyCFunction)(void (*)(void))forward, METH_FASTCALL,
     "forward(rewriter, data, header, abs_send_time, audio_level, now, protect, session, fd, sockaddr): "
     "the rewriter's fast path, protect and send; None if not the fast path"},
    {"bind_rewriter", bind_rewriter, METH_VARARGS, "bind_rewriter(cls, max_sequence_step, sent_cls)"},
    {"fan_out", (PyCFunction)(void (*)(void))fan_out, METH_FASTCALL,
     "fan_out(tracks, data, header, abs_send_time, audio_level, keyframe, now, fallback) -> copies sent"},
    {"bind_leg", bind_leg, METH_VARARGS, "bind_leg(cls, protect): the leg class fan_out sends on"},
    {"bind_track", bind_track, METH_O, "bind_track(cls): the down-track class whose slots fan_out reads"},
    {"counters", counters, METH_NOARGS, "{'fast_copies': copies fan_out sent itself}"},
    {"unprotect", (PyCFunction)(void (*)(void))unprotect, METH_FASTCALL,
     "unprotect(unsrtp_fn, session, data): the RTP packet in an SRTP datagram"},
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
    str_rewriter = PyUnicode_InternFromString("rewriter");
    str_output = PyUnicode_InternFromString("output");
    str_is_closing = PyUnicode_InternFromString("is_closing");
    str_sendto = PyUnicode_InternFromString("sendto");
    str_packets = PyUnicode_InternFromString("packets");
    one = PyLong_FromLong(1);
    /* API: what aiortc_glue.NATIVE_API expects (a build left from older sources is not used). */
    if (!str_rewriter || !str_output || !str_is_closing || !str_sendto ||
        !str_packets || !one || PyModule_AddIntConstant(m, "MAX_PACKET", BUFFER_SIZE - MAX_TRAILER) < 0 ||
        PyModule_AddIntConstant(m, "API", 7) < 0 || PyType_Ready(&RewriterStateType) < 0 ||
        PyModule_AddObjectRef(m, "RewriterState", (PyObject *)&RewriterStateType) < 0 ||
        PyType_Ready(&LegStateType) < 0 || PyModule_AddObjectRef(m, "LegState", (PyObject *)&LegStateType) < 0 ||
        PyType_Ready(&TrackStateType) < 0 ||
        PyModule_AddObjectRef(m, "TrackState", (PyObject *)&TrackStateType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
