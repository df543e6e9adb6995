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
 * Linux only (epoll, accept4, eventfd): setup.py builds it there, optionally.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NAME_MAX_BYTES 100 /* protocol.NAME_MAX */
#define FIRST_READ 4096    /* hub.FIRST_READ: what follows a NUL in that read is padding */
#define ACCEPT_BATCH 256   /* hub.ACCEPT_BATCH */
#define EVENT_BATCH 1024   /* hub.EVENT_BATCH */
#define ACCEPT_PAUSE 1.0   /* hub.ACCEPT_PAUSE, seconds */
#define NOTES_MAX 4096     /* notes queued between two sweeps; more are only counted */
#define EAGER_MIN (-4)     /* how far the first-read score falls: 4 hits in a row make it eager again */
#define EAGER_MAX 4
#define PROBE_EVERY 16     /* while not eager, every 16th connection still tries the first read */

enum { NAMING, WAITING, DONE };

/* The labels of metrics.REJECTION_REASONS and TIMEOUT_KINDS, in this order. */
static const char *const REASONS[] = {"server_full", "source_limit", "accept_failed", "empty_name",
                                      "name_too_long", "unexpected_data", "no_ipv4_address", "shutdown"};
enum { R_SERVER_FULL, R_SOURCE_LIMIT, R_ACCEPT_FAILED, R_EMPTY_NAME, R_NAME_TOO_LONG, R_UNEXPECTED,
       R_NO_IPV4, R_SHUTDOWN, N_REASONS };
static const char *const KINDS[] = {"name", "waiter_ttl"};
enum { T_NAME, T_WAITER, N_KINDS };
enum { NOTE_REJECTED, NOTE_TIMEOUT, NOTE_ACCEPT_FAILED, N_NOTES };
static const char *const NOTE_TYPES[] = {"rejected", "timeout", "accept_failed"};

/* -- keyed hashing (SipHash-1-3): clients choose names, so a fixed hash would let them collide -- */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                    \
    do {                                                                                            \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                                   \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                      \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                      \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                                   \
    } while (0)

static uint64_t siphash13(uint64_t k0, uint64_t k1, const uint8_t *m, size_t len) {
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    uint64_t last = (uint64_t)len << 56, word;
    const uint8_t *end = m + len - (len % 8);
    for (; m != end; m += 8) {
        memcpy(&word, m, 8);
        v3 ^= word; SIPROUND; v0 ^= word;
    }
    for (size_t i = 0; i < len % 8; i++) last |= (uint64_t)m[i] << (8 * i);
    v3 ^= last; SIPROUND; v0 ^= last;
    v2 ^= 0xff; SIPROUND; SIPROUND; SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* -- the protocol rules, shared by the hub and the module functions the tests compare -- */

/* protocol.parse_name: the name is the first read up to its first NUL (looked for among the first
 * 101 bytes); returns a rejection reason, or -1 with *name_len set. */
static int check_name(const uint8_t *data, size_t n, size_t *name_len) {
    size_t scan = n < NAME_MAX_BYTES + 1 ? n : NAME_MAX_BYTES + 1;
    const uint8_t *nul = memchr(data, 0, scan);
    size_t len = nul ? (size_t)(nul - data) : n;
    if (len > NAME_MAX_BYTES) return R_NAME_TOO_LONG;
    if (len == 0) return R_EMPTY_NAME;
    *name_len = len;
    return -1;
}

/* protocol.wire_ipv4 and the 8-byte message: IPv4 as is, IPv4-mapped IPv6 as IPv4, native IPv6
 * refused (returns 0). */
static int make_reply(const struct sockaddr_storage *ss, uint8_t reply[8]) {
    memset(reply, 0, 8);
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)ss;
        memcpy(reply, &in->sin_addr, 4);
        memcpy(reply + 4, &in->sin_port, 2);
        return 1;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;
        if (!IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) return 0;
        memcpy(reply, in6->sin6_addr.s6_addr + 12, 4);
        memcpy(reply + 4, &in6->sin6_port, 2);
        return 1;
    }
    return 0;
}

/* -- the hub's state -- */
typedef struct source { /* one source address and how many connections it holds */
    struct source *next;
    long count;
    uint8_t addr[16];
} source_t;

struct deadlines;
typedef struct conn {
    int fd;
    uint8_t state, registered, has_reply, name_len;
    uint8_t reply[8]; /* message 1: its own address; its partner's message 2 */
    source_t *source;
    struct conn *next_waiter;       /* chain in the waiting table */
    struct conn *prev, *next;       /* its deadline list, oldest first */
    struct deadlines *list;         /* NULL when it has no deadline */
    double deadline;
    uint8_t name[NAME_MAX_BYTES];
} conn_t;

/* One timeout for all, so the order of arrival is the order of expiry: a FIFO list, no timers
 * (expiry.ExpiryBuckets in Python; exact deadlines here, checked at each sweep). */
typedef struct deadlines {
    conn_t *head, *tail;
    double timeout;
} deadlines_t;

typedef struct { /* a rare event, logged by Python at the next sweep */
    uint8_t type, code, name_len;
    long value; /* the cap, the first read's length, or the errno */
    uint8_t addr[16];
    uint8_t name[NAME_MAX_BYTES];
} note_t;

typedef struct {
    PyObject_HEAD
    pthread_mutex_t lock;
    int epfd, listen_fd, wake_fd, notes_fd, family, listening, stopping, closed;
    double resume_at;
    long connection_cap, per_source_cap;
    uint64_t key0, key1;
    struct epoll_event *events;
    conn_t **by_fd; /* the connections in the epoll set, by descriptor */
    size_t by_fd_size;
    conn_t **waiting; /* name -> waiter, chained */
    size_t waiting_buckets, waiting_count;
    source_t **sources;
    size_t source_buckets, source_count;
    deadlines_t naming, waiters;
    unsigned long long connections_total, pairings_total, waiters_gone_total;
    unsigned long long rejected[N_REASONS], timeouts[N_KINDS], notes_dropped[N_NOTES];
    long open;
    /* Two guesses that save a failing syscall each when the server is faster than its clients
     * (light load): how many to accept before the next accept4 would say EAGAIN, and whether a new
     * connection's name is already there. A wrong guess costs one epoll wake-up, never a client. */
    int accept_limit, stopped_at_limit, eager, probe;
    note_t *notes;
    size_t notes_len;
} Hub;

static double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic()'s clock */
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void note(Hub *h, int type, int code, long value, const source_t *source, const conn_t *conn) {
    if (h->notes_len >= NOTES_MAX) {
        h->notes_dropped[type]++;
        return;
    }
    if (h->notes_len == 0) { /* the first since Python last took them: wake its reader once */
        uint64_t one = 1;
        if (write(h->notes_fd, &one, sizeof one) < 0) { /* full counter: it is readable anyway */ }
    }
    note_t *n = &h->notes[h->notes_len++];
    n->type = (uint8_t)type;
    n->code = (uint8_t)code;
    n->value = value;
    memcpy(n->addr, source ? source->addr : (const uint8_t *)"\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 16);
    n->name_len = conn ? conn->name_len : 0;
    if (conn) memcpy(n->name, conn->name, conn->name_len);
}

/* -- tables: chained hash tables that double when they hold as many items as buckets -- */
static size_t waiter_slot(const Hub *h, const uint8_t *name, size_t len, size_t buckets) {
    return siphash13(h->key0, h->key1, name, len) & (buckets - 1);
}

static size_t source_slot(const Hub *h, const uint8_t addr[16], size_t buckets) {
    return siphash13(h->key0, h->key1, addr, 16) & (buckets - 1);
}

static void grow_waiting(Hub *h) {
    if (h->waiting_count < h->waiting_buckets) return;
    size_t size = h->waiting_buckets * 2;
    conn_t **fresh = calloc(size, sizeof *fresh);
    if (!fresh) return; /* stay slower, not wrong */
    for (size_t i = 0; i < h->waiting_buckets; i++)
        for (conn_t *c = h->waiting[i], *next; c; c = next) {
            next = c->next_waiter;
            size_t at = waiter_slot(h, c->name, c->name_len, size);
            c->next_waiter = fresh[at];
            fresh[at] = c;
        }
    free(h->waiting);
    h->waiting = fresh;
    h->waiting_buckets = size;
}

static void grow_sources(Hub *h) {
    if (h->source_count < h->source_buckets) return;
    size_t size = h->source_buckets * 2;
    source_t **fresh = calloc(size, sizeof *fresh);
    if (!fresh) return;
    for (size_t i = 0; i < h->source_buckets; i++)
        for (source_t *s = h->sources[i], *next; s; s = next) {
            next = s->next;
            size_t at = source_slot(h, s->addr, size);
            s->next = fresh[at];
            fresh[at] = s;
        }
    free(h->sources);
    h->sources = fresh;
    h->source_buckets = size;
}

/* Remove and return the waiter of this name, or NULL. */
static conn_t *waiting_take(Hub *h, const uint8_t *name, size_t len) {
    conn_t **link = &h->waiting[waiter_slot(h, name, len, h->waiting_buckets)];
    for (; *link; link = &(*link)->next_waiter) {
        conn_t *c = *link;
        if (c->name_len == len && memcmp(c->name, name, len) == 0) {
            *link = c->next_waiter;
            h->waiting_count--;
            return c;
        }
    }
    return NULL;
}

static void waiting_put(Hub *h, conn_t *c) {
    grow_waiting(h);
    conn_t **head = &h->waiting[waiter_slot(h, c->name, c->name_len, h->waiting_buckets)];
    c->next_waiter = *head;
    *head = c;
    h->waiting_count++;
}

static void waiting_forget(Hub *h, conn_t *c) {
    conn_t **link = &h->waiting[waiter_slot(h, c->name, c->name_len, h->waiting_buckets)];
    for (; *link; link = &(*link)->next_waiter)
        if (*link == c) {
            *link = c->next_waiter;
            h->waiting_count--;
            return;
        }
}

static source_t *source_take(Hub *h, const uint8_t addr[16]) {
    for (source_t *s = h->sources[source_slot(h, addr, h->source_buckets)]; s; s = s->next)
        if (memcmp(s->addr, addr, 16) == 0) {
            s->count++;
            return s;
        }
    source_t *s = malloc(sizeof *s);
    if (!s) return NULL;
    memcpy(s->addr, addr, 16);
    s->count = 1;
    grow_sources(h);
    source_t **head = &h->sources[source_slot(h, addr, h->source_buckets)];
    s->next = *head;
    *head = s;
    h->source_count++;
    return s;
}

static void source_release(Hub *h, source_t *s) {
    if (--s->count > 0) return;
    source_t **link = &h->sources[source_slot(h, s->addr, h->source_buckets)];
    for (; *link; link = &(*link)->next)
        if (*link == s) {
            *link = s->next;
            break;
        }
    h->source_count--;
    free(s);
}

static void deadline_add(deadlines_t *list, conn_t *c, double now) {
    c->deadline = now + list->timeout;
    c->list = list;
    c->next = NULL;
    c->prev = list->tail;
    if (list->tail) list->tail->next = c; else list->head = c;
    list->tail = c;
}

static void deadline_forget(conn_t *c) {
    deadlines_t *list = c->list;
    if (!list) return;
    if (c->prev) c->prev->next = c->next; else list->head = c->next;
    if (c->next) c->next->prev = c->prev; else list->tail = c->prev;
    c->list = NULL;
}

/* -- connections -- */

/* Forget c everywhere and close it; closing takes it out of the epoll set. */
static void close_conn(Hub *h, conn_t *c) {
    if (c->registered) h->by_fd[c->fd] = NULL;
    if (c->state == WAITING) waiting_forget(h, c);
    deadline_forget(c);
    h->open--;
    source_release(h, c->source);
    close(c->fd);
    free(c);
}

/* Close without a reply, counted and noted by reason; value is the note's context (-1: none). */
static void reject(Hub *h, conn_t *c, int reason, long value) {
    h->rejected[reason]++;
    note(h, NOTE_REJECTED, reason, value, c->source, NULL);
    close_conn(h, c);
}

static int send_all(int fd, const uint8_t *data, size_t len) {
    ssize_t sent;
    do sent = send(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    while (sent < 0 && errno == EINTR);
    return sent == (ssize_t)len; /* a peer that reset or went is that pairing's loss alone */
}

static int watch(Hub *h, conn_t *c) {
    if ((size_t)c->fd >= h->by_fd_size) {
        size_t size = h->by_fd_size * 2 > (size_t)c->fd + 1 ? h->by_fd_size * 2 : (size_t)c->fd + 1;
        conn_t **fresh = realloc(h->by_fd, size * sizeof *fresh);
        if (!fresh) return -1;
        memset(fresh + h->by_fd_size, 0, (size - h->by_fd_size) * sizeof *fresh);
        h->by_fd = fresh;
        h->by_fd_size = size;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = c->fd};
    if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) return -1;
    h->by_fd[c->fd] = c;
    c->registered = 1;
    return 0;
}

static ssize_t first_read(int fd, uint8_t *buf) {
    ssize_t n;
    do n = recv(fd, buf, FIRST_READ, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    return n;
}

/* The name has come: wait for a partner, or pair with the one waiting (hub.Hub._named). */
static void named(Hub *h, conn_t *c, const uint8_t *data, size_t n) {
    size_t len;
    int reason = check_name(data, n, &len);
    if (reason >= 0) {
        reject(h, c, reason, (long)n);
        return;
    }
    if (!c->has_reply) {
        reject(h, c, R_NO_IPV4, -1);
        return;
    }
    memcpy(c->name, data, len);
    c->name_len = (uint8_t)len;
    conn_t *partner = waiting_take(h, c->name, len);
    if (!partner) {
        if (!send_all(c->fd, c->reply, 8)) { /* message 1: your address as we see it */
            close_conn(h, c);
            return;
        }
        c->state = WAITING;
        waiting_put(h, c);
        if (c->registered || watch(h, c) == 0) deadline_add(&h->waiters, c, monotonic());
        else close_conn(h, c);
        return;
    }
    uint8_t both[16];
    memcpy(both, c->reply, 8);
    memcpy(both + 8, partner->reply, 8);
    partner->state = c->state = DONE;
    send_all(c->fd, both, 16);            /* message 1, then message 2: your peer's address */
    send_all(partner->fd, c->reply, 8);   /* the waiter's message 2 */
    close_conn(h, partner);
    close_conn(h, c);
    h->pairings_total++;
}

/* A connection in the epoll set is readable (hub.Hub._readable). */
static void readable(Hub *h, conn_t *c) {
    uint8_t buf[FIRST_READ];
    ssize_t n = first_read(c->fd, buf);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) {
        if (c->state == WAITING) h->waiters_gone_total++;
        close_conn(h, c);
    } else if (c->state == NAMING) {
        deadline_forget(c);
        named(h, c, buf, (size_t)n);
    } else {
        reject(h, c, R_UNEXPECTED, -1);
    }
}

/* A new connection: the caps, then the name at once, since it is usually there (hub.Hub._admit). */
static void admit(Hub *h, int fd, const struct sockaddr_storage *ss) {
    uint8_t addr[16] = {0};
    if (ss->ss_family == AF_INET6)
        memcpy(addr, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
    else
        memcpy(addr, &((const struct sockaddr_in *)ss)->sin_addr, 4);
    conn_t *c = calloc(1, sizeof *c);
    source_t *source = c ? source_take(h, addr) : NULL;
    if (!source) { /* out of memory: refuse this one, as an accept that failed */
        free(c);
        close(fd);
        h->rejected[R_ACCEPT_FAILED]++;
        note(h, NOTE_ACCEPT_FAILED, 0, ENOMEM, NULL, NULL);
        return;
    }
    h->connections_total++;
    h->open++;
    c->fd = fd;
    c->source = source;
    c->has_reply = (uint8_t)make_reply(ss, c->reply);
    if (h->open > h->connection_cap) {
        reject(h, c, R_SERVER_FULL, h->connection_cap);
        return;
    }
    if (source->count > h->per_source_cap) {
        reject(h, c, R_SOURCE_LIMIT, h->per_source_cap);
        return;
    }
    uint8_t buf[FIRST_READ];
    ssize_t n = -1;
    errno = EAGAIN;
    if (h->eager >= 0 || ++h->probe % PROBE_EVERY == 0) { /* the name is usually there already */
        n = first_read(fd, buf);
        int missed = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
        if (missed && h->eager > EAGER_MIN) h->eager--;
        else if (!missed && h->eager < EAGER_MAX) h->eager++;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { /* not here yet: name_timeout at most */
        if (watch(h, c) == 0) deadline_add(&h->naming, c, monotonic());
        else close_conn(h, c);
    } else if (n > 0) {
        named(h, c, buf, (size_t)n);
    } else {
        close_conn(h, c); /* a bare connection (a health probe): forgotten, nothing written */
    }
}

/* Accept up to accept_limit; the listener is level-triggered, so what is left wakes the next
 * epoll_wait at once. The limit shrinks to what the last batch found and doubles while the
 * listener stays ready after a batch that stopped at it, up to ACCEPT_BATCH. */
static void accept_batch(Hub *h) {
    if (h->stopped_at_limit && h->accept_limit < ACCEPT_BATCH) h->accept_limit *= 2;
    h->stopped_at_limit = 0;
    for (int i = 0; i < h->accept_limit; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int fd = accept4(h->listen_fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            admit(h, fd, &ss);
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            h->accept_limit = i > 1 ? i : 1;
            return;
        }
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* out of descriptors or memory: stop accepting for ACCEPT_PAUSE (as asyncio does) */
            h->rejected[R_ACCEPT_FAILED]++;
            note(h, NOTE_ACCEPT_FAILED, 0, errno, NULL, NULL);
            epoll_ctl(h->epfd, EPOLL_CTL_DEL, h->listen_fd, NULL);
            h->listening = 0;
            h->resume_at = monotonic() + ACCEPT_PAUSE;
            return;
        } /* ECONNABORTED and the like: that client is gone, the next may not be */
    }
    h->stopped_at_limit = 1;
}

static void maybe_resume(Hub *h, double now) {
    if (h->listening || h->closed || now < h->resume_at) return;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = h->listen_fd};
    if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, h->listen_fd, &ev) == 0) h->listening = 1;
}

/* One wake-up's events: every ready connection first, then the accepts, so that a waiter whose
 * close is in this batch is forgotten before a newcomer could meet it. Called with the lock. */
static void handle(Hub *h, int count) {
    int accept = 0;
    for (int i = 0; i < count; i++) {
        int fd = h->events[i].data.fd;
        if (fd == h->listen_fd) accept = 1;
        else if (fd != h->wake_fd && (size_t)fd < h->by_fd_size && h->by_fd[fd]) readable(h, h->by_fd[fd]);
    }
    if (accept) accept_batch(h);
    else h->stopped_at_limit = 0; /* the last batch emptied the queue after all */
    if (!h->listening) maybe_resume(h, monotonic());
}

static void expire(Hub *h, deadlines_t *list, int kind, double now) {
    while (list->head && list->head->deadline <= now) {
        conn_t *c = list->head;
        deadline_forget(c);
        h->timeouts[kind]++;
        note(h, NOTE_TIMEOUT, kind, -1, c->source, c);
        close_conn(h, c);
    }
}

/* Close every connection in the epoll set (all that are open between two wake-ups). */
static long close_everything(Hub *h) {
    long closed = 0;
    for (size_t fd = 0; fd < h->by_fd_size; fd++)
        if (h->by_fd[fd]) {
            close_conn(h, h->by_fd[fd]);
            closed++;
        }
    return closed;
}

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
