/*
 * services.rendezvous._hub: the rendezvous server's hot path in C, an optional accelerator.
 *
 * Why it exists: the pure-Python hub (hub.py) reaches 0.76-0.97x the pairings/s of a C server of
 * tcpunchd's design and spends 1.24-2.2x its CPU per pairing; the difference is the interpreter
 * (about 30 % of the profiled time) and a second epoll wait per wake-up (the event loop's, then
 * the hub's). This module is the same hub in C: the same accept batches, the same first read of
 * the name with the same rules (protocol.parse_name, protocol.wire_ipv4), the same waiting table,
 * the same replies (message 1, and messages 1 + 2 in one 16-byte write to the joiner), the same
 * limits and deadlines and the same counters. The pure-Python hub stays the fallback and the
 * reference: the tests run against both (tests/rendezvous).
 *
 * How it is driven (chub.py chooses; see its docstring for the measurements): run() is an epoll
 * loop of its own, meant for a thread, that holds no GIL at all (it never touches a Python
 * object), so one wake-up is one epoll_wait; poll() handles one batch for an event loop's reader
 * instead. Everything the thread and Python share (the tables, the counters, the queue of notes)
 * is under one mutex, taken once per batch: Python's calls (sweep, counters, notes, close_all)
 * are rare.
 *
 * Rare events are not logged here: rejections, timeouts and accept failures are queued as notes
 * (a bounded queue; what does not fit is counted), and the first note since Python last took them
 * signals an eventfd that the event loop watches; Python then hands them to the rate-limited
 * loggers the Python hub uses, so the log lines are the same, a moment later.
 *
 * Linux only (epoll, accept4, eventfd): setup.py builds it there, optionally. Three files, one
 * job each (_hub.h says which); this one is the Python type: its methods take the lock and call
 * _hub_conn.c's and _hub_tables.c's functions.
 */
#include "_hub.h"

/* -- the Python type -- */
#define LOCK(h) pthread_mutex_lock(&(h)->lock)
#define UNLOCK(h) pthread_mutex_unlock(&(h)->lock)

static int Hub_init(Hub *h, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"listen_fd", "family", "connection_cap", "per_source_cap", "name_timeout",
                             "waiter_ttl", "key", NULL};
    Py_buffer key;
    if (h->events) {
        PyErr_SetString(PyExc_RuntimeError, "a hub is initialised once");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "iillddy*", kwlist, &h->listen_fd, &h->family,
                                     &h->connection_cap, &h->per_source_cap, &h->naming.timeout,
                                     &h->waiters.timeout, &key))
        return -1;
    int ok = key.len == 16;
    if (ok) {
        memcpy(&h->key0, key.buf, 8);
        memcpy(&h->key1, (const char *)key.buf + 8, 8);
    }
    PyBuffer_Release(&key);
    if (!ok || h->connection_cap < 1 || h->per_source_cap < 1 || !(h->naming.timeout > 0) ||
        !(h->waiters.timeout > 0) || (h->family != AF_INET && h->family != AF_INET6)) {
        PyErr_SetString(PyExc_ValueError, "a 16-byte key, caps >= 1, timeouts > 0, an AF_INET or AF_INET6 listener");
        return -1;
    }
    pthread_mutex_init(&h->lock, NULL);
    h->epfd = h->wake_fd = h->notes_fd = -1;
    h->waiting_buckets = h->source_buckets = 1024;
    h->by_fd_size = 1024;
    h->events = calloc(EVENT_BATCH, sizeof *h->events);
    h->waiting = calloc(h->waiting_buckets, sizeof *h->waiting);
    h->sources = calloc(h->source_buckets, sizeof *h->sources);
    h->by_fd = calloc(h->by_fd_size, sizeof *h->by_fd);
    h->notes = calloc(NOTES_MAX, sizeof *h->notes);
    if (!h->events || !h->waiting || !h->sources || !h->by_fd || !h->notes) {
        PyErr_NoMemory();
        return -1;
    }
    h->epfd = epoll_create1(EPOLL_CLOEXEC);
    h->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    h->notes_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event listen = {.events = EPOLLIN, .data.fd = h->listen_fd};
    struct epoll_event wake = {.events = EPOLLIN, .data.fd = h->wake_fd};
    if (h->epfd < 0 || h->wake_fd < 0 || h->notes_fd < 0 || epoll_ctl(h->epfd, EPOLL_CTL_ADD, h->listen_fd, &listen) < 0 ||
        epoll_ctl(h->epfd, EPOLL_CTL_ADD, h->wake_fd, &wake) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    h->listening = 1;
    h->accept_limit = 1;
    return 0;
}

static void Hub_dealloc(Hub *h) {
    if (h->events) { /* initialised: close what is still open, without counting it */
        if (!h->closed && h->by_fd) close_everything(h);
        if (h->epfd >= 0) close(h->epfd);
        if (h->wake_fd >= 0) close(h->wake_fd);
        if (h->notes_fd >= 0) close(h->notes_fd);
        for (size_t i = 0; h->sources && i < h->source_buckets; i++)
            for (source_t *s = h->sources[i], *next; s; s = next) {
                next = s->next;
                free(s);
            }
        pthread_mutex_destroy(&h->lock);
    }
    free(h->events);
    free(h->waiting);
    free(h->sources);
    free(h->by_fd);
    free(h->notes);
    Py_TYPE(h)->tp_free((PyObject *)h);
}

static int check_open(Hub *h) {
    if (!h->events || h->closed) {
        PyErr_SetString(PyExc_RuntimeError, h->events ? "the hub is closed" : "the hub is not initialised");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(run_doc, "run()\n--\n\nServe on this thread until stop(), without the GIL: one epoll_wait per wake-up.");
static PyObject *Hub_run(Hub *h, PyObject *Py_UNUSED(ignored)) {
    if (check_open(h) < 0) return NULL;
    int error = 0;
    sigset_t all, previous;
    sigfillset(&all); /* signals go to the main thread, whose event loop handles them */
    Py_BEGIN_ALLOW_THREADS
    pthread_sigmask(SIG_BLOCK, &all, &previous);
    for (;;) {
        LOCK(h);
        int stopping = h->stopping, timeout = -1;
        if (!h->listening) { /* paused after EMFILE and the like: wake up in time to resume */
            double wait = h->resume_at - monotonic();
            timeout = wait > 0 ? (int)(wait * 1000) + 1 : 0;
        }
        UNLOCK(h);
        if (stopping) break;
        int count = epoll_wait(h->epfd, h->events, EVENT_BATCH, timeout);
        if (count < 0 && errno != EINTR) {
            error = errno;
            break;
        }
        LOCK(h);
        if (!h->stopping) handle(h, count < 0 ? 0 : count);
        UNLOCK(h);
    }
    pthread_sigmask(SIG_SETMASK, &previous, NULL);
    Py_END_ALLOW_THREADS
    if (error) {
        errno = error;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_RETURN_NONE;
}

PyDoc_STRVAR(stop_doc, "stop()\n--\n\nMake run() return (from another thread); the connections stay open.");
static PyObject *Hub_stop(Hub *h, PyObject *Py_UNUSED(ignored)) {
    if (check_open(h) < 0) return NULL;
    LOCK(h);
    h->stopping = 1;
    UNLOCK(h);
    uint64_t one = 1;
    if (write(h->wake_fd, &one, sizeof one) < 0 && errno != EAGAIN) return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(poll_doc, "poll()\n--\n\nHandle every ready connection, then accept: one wake-up of an event loop's reader.");
static PyObject *Hub_poll(Hub *h, PyObject *Py_UNUSED(ignored)) {
    if (check_open(h) < 0) return NULL;
    LOCK(h);
    int count = epoll_wait(h->epfd, h->events, EVENT_BATCH, 0);
    if (count > 0) handle(h, count);
    else if (!h->listening) maybe_resume(h, monotonic());
    UNLOCK(h);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(sweep_doc, "sweep()\n--\n\nClose every connection whose name or partner is overdue; resume accepting after a pause.");
static PyObject *Hub_sweep(Hub *h, PyObject *Py_UNUSED(ignored)) {
    if (check_open(h) < 0) return NULL;
    LOCK(h);
    double now = monotonic();
    expire(h, &h->naming, T_NAME, now);
    expire(h, &h->waiters, T_WAITER, now);
    watch_waiters(h);
    maybe_resume(h, now);
    UNLOCK(h);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(close_all_doc, "close_all()\n--\n\nClose every client without a reply (shutdown) and the epoll set; returns how many.");
static PyObject *Hub_close_all(Hub *h, PyObject *Py_UNUSED(ignored)) {
    if (check_open(h) < 0) return NULL;
    LOCK(h);
    long closed = close_everything(h);
    h->rejected[R_SHUTDOWN] += (unsigned long long)closed;
    close(h->epfd);
    close(h->wake_fd);
    h->epfd = h->wake_fd = -1;
    h->closed = 1;
    UNLOCK(h);
    return PyLong_FromLong(closed);
}

PyDoc_STRVAR(fileno_doc, "fileno()\n--\n\nThe epoll set's descriptor, for an event loop's reader.");
static PyObject *Hub_fileno(Hub *h, PyObject *Py_UNUSED(ignored)) {
    if (check_open(h) < 0) return NULL;
    return PyLong_FromLong(h->epfd);
}

PyDoc_STRVAR(notes_fileno_doc, "notes_fileno()\n--\n\nAn eventfd, readable when notes wait for take_notes().");
static PyObject *Hub_notes_fileno(Hub *h, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromLong(h->notes_fd);
}

static PyObject *by_label(const char *const *labels, const unsigned long long *values, int count) {
    PyObject *dict = PyDict_New();
    for (int i = 0; dict && i < count; i++) {
        PyObject *value = PyLong_FromUnsignedLongLong(values[i]);
        if (!value || PyDict_SetItemString(dict, labels[i], value) < 0) Py_CLEAR(dict);
        Py_XDECREF(value);
    }
    return dict;
}

PyDoc_STRVAR(counters_doc, "counters()\n--\n\nEvery counter and gauge of the hub, read at once (metrics.Metrics's names).");
static PyObject *Hub_counters(Hub *h, PyObject *Py_UNUSED(ignored)) {
    unsigned long long rejected[N_REASONS], timeouts[N_KINDS];
    LOCK(h);
    unsigned long long connections = h->connections_total, pairings = h->pairings_total;
    unsigned long long gone = h->waiters_gone_total;
    long open = h->open;
    size_t waiting = h->waiting_count;
    memcpy(rejected, h->rejected, sizeof rejected);
    memcpy(timeouts, h->timeouts, sizeof timeouts);
    UNLOCK(h);
    PyObject *by_reason = by_label(REASONS, rejected, N_REASONS), *by_kind = by_label(KINDS, timeouts, N_KINDS);
    PyObject *result = NULL;
    if (by_reason && by_kind)
        result = Py_BuildValue("{sKsKsKslsnsOsO}", "connections_total", connections, "pairings_total", pairings,
                               "waiters_gone_total", gone, "open", open, "waiters", (Py_ssize_t)waiting,
                               "rejected", by_reason, "timeouts", by_kind);
    Py_XDECREF(by_reason);
    Py_XDECREF(by_kind);
    return result;
}

static PyObject *source_text(int family, const uint8_t addr[16]) {
    char text[INET6_ADDRSTRLEN];
    if (!inet_ntop(family, addr, text, sizeof text)) text[0] = 0;
    return PyUnicode_FromString(text);
}

PyDoc_STRVAR(take_notes_doc,
             "take_notes()\n--\n\nThe rare events since the last call, as (type, label, source, value, name) "
             "tuples, and how many of each type did not fit the queue.");
static PyObject *Hub_take_notes(Hub *h, PyObject *Py_UNUSED(ignored)) {
    LOCK(h); /* held while the list is built: at most NOTES_MAX tuples, every sweep */
    PyObject *notes = PyList_New((Py_ssize_t)h->notes_len);
    for (size_t i = 0; notes && i < h->notes_len; i++) {
        const note_t *n = &h->notes[i];
        const char *label = n->type == NOTE_REJECTED ? REASONS[n->code] : n->type == NOTE_TIMEOUT ? KINDS[n->code] : "";
        PyObject *source = n->type == NOTE_ACCEPT_FAILED ? PyUnicode_FromString("") : source_text(h->family, n->addr);
        PyObject *item = source ? Py_BuildValue("ssNly#", NOTE_TYPES[n->type], label, source, n->value,
                                                (const char *)n->name, (Py_ssize_t)n->name_len) : NULL;
        if (!item) {
            Py_CLEAR(notes);
            break;
        }
        PyList_SET_ITEM(notes, (Py_ssize_t)i, item);
    }
    PyObject *dropped = by_label(NOTE_TYPES, h->notes_dropped, N_NOTES);
    uint64_t count;
    if (read(h->notes_fd, &count, sizeof count) < 0) { /* nothing was signalled: fine */ }
    h->notes_len = 0;
    memset(h->notes_dropped, 0, sizeof h->notes_dropped);
    UNLOCK(h);
    if (!notes || !dropped) {
        Py_XDECREF(notes);
        Py_XDECREF(dropped);
        return NULL;
    }
    return Py_BuildValue("NN", notes, dropped);
}

static PyMethodDef Hub_methods[] = {
    {"run", (PyCFunction)Hub_run, METH_NOARGS, run_doc},
    {"stop", (PyCFunction)Hub_stop, METH_NOARGS, stop_doc},
    {"poll", (PyCFunction)Hub_poll, METH_NOARGS, poll_doc},
    {"sweep", (PyCFunction)Hub_sweep, METH_NOARGS, sweep_doc},
    {"close_all", (PyCFunction)Hub_close_all, METH_NOARGS, close_all_doc},
    {"fileno", (PyCFunction)Hub_fileno, METH_NOARGS, fileno_doc},
    {"notes_fileno", (PyCFunction)Hub_notes_fileno, METH_NOARGS, notes_fileno_doc},
    {"counters", (PyCFunction)Hub_counters, METH_NOARGS, counters_doc},
    {"take_notes", (PyCFunction)Hub_take_notes, METH_NOARGS, take_notes_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject HubType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "services.rendezvous._hub.Hub",
    .tp_doc = PyDoc_STR("Hub(listen_fd, family, connection_cap, per_source_cap, name_timeout, waiter_ttl, key)\n"
                        "--\n\nThe waiting table, the limits and the deadlines over one epoll set (hub.Hub's, in C)."),
    .tp_basicsize = sizeof(Hub),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Hub_init,
    .tp_dealloc = (destructor)Hub_dealloc,
    .tp_methods = Hub_methods,
};

/* -- module functions: the rules above, for the tests that compare them with protocol.py -- */
PyDoc_STRVAR(parse_name_doc,
             "parse_name(first_read)\n--\n\n(name, None) for a name the hub accepts, else (None, reason).");
static PyObject *module_parse_name(PyObject *Py_UNUSED(module), PyObject *arg) {
    Py_buffer data;
    size_t len;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) return NULL;
    int reason = check_name(data.buf, (size_t)data.len, &len);
    PyObject *result = reason >= 0 ? Py_BuildValue("(Os)", Py_None, REASONS[reason])
                                   : Py_BuildValue("(y#O)", (const char *)data.buf, (Py_ssize_t)len, Py_None);
    PyBuffer_Release(&data);
    return result;
}

PyDoc_STRVAR(reply_for_doc,
             "reply_for(host, port)\n--\n\nThe 8-byte message the hub sends a peer at host:port (an IPv4 or IPv6 "
             "address), or None when it has no IPv4 form.");
static PyObject *module_reply_for(PyObject *Py_UNUSED(module), PyObject *args) {
    const char *host;
    int port;
    if (!PyArg_ParseTuple(args, "si", &host, &port)) return NULL;
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port must be within 0..65535");
        return NULL;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *in = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
    } else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
    } else {
        PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
        return NULL;
    }
    uint8_t reply[8];
    if (!make_reply(&ss, reply)) Py_RETURN_NONE;
    return PyBytes_FromStringAndSize((const char *)reply, 8);
}

static PyMethodDef module_methods[] = {
    {"parse_name", module_parse_name, METH_O, parse_name_doc},
    {"reply_for", module_reply_for, METH_VARARGS, reply_for_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_hub", "The rendezvous hub's hot path in C (see hub.py and chub.py).", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__hub(void) {
    if (PyType_Ready(&HubType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&HubType);
    if (PyModule_AddObject(m, "Hub", (PyObject *)&HubType) < 0) {
        Py_DECREF(&HubType);
        Py_DECREF(m);
        return NULL;
    }
    if (PyModule_AddIntConstant(m, "NAME_MAX", NAME_MAX_BYTES) < 0 ||
        PyModule_AddIntConstant(m, "FIRST_READ", FIRST_READ) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
