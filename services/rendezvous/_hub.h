/*
 * _hub.h: what the three files of the C hub share (services/rendezvous/_hub.c, _hub_tables.c,
 * _hub_conn.c): the limits, the labels, the state and the functions one file calls in another.
 * Split by job: _hub_tables.c keeps the tables, the rules and the notes; _hub_conn.c moves the
 * connections through the protocol; _hub.c is the Python type. Built as one extension with
 * -fvisibility=hidden, so nothing here is seen outside it.
 */
#ifndef COSMIC_RENDEZVOUS_HUB_H
#define COSMIC_RENDEZVOUS_HUB_H

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
extern const char *const REASONS[];
enum { R_SERVER_FULL, R_SOURCE_LIMIT, R_ACCEPT_FAILED, R_EMPTY_NAME, R_NAME_TOO_LONG, R_UNEXPECTED,
       R_NO_IPV4, R_SHUTDOWN, N_REASONS };
extern const char *const KINDS[];
enum { T_NAME, T_WAITER, N_KINDS };
enum { NOTE_REJECTED, NOTE_TIMEOUT, NOTE_ACCEPT_FAILED, N_NOTES };
extern const char *const NOTE_TYPES[];

/* -- the hub's state -- */
typedef struct source { /* one source address and how many connections it holds */
    struct source *next;
    long count;
    uint8_t addr[16];
} source_t;

struct deadlines;
typedef struct conn {
    int fd;
    uint8_t state, has_reply, name_len;
    uint8_t tracked;    /* in by_fd: it outlived its accept (naming or waiting), close_all finds it */
    uint8_t registered; /* in the epoll set (a waiter joins it at the first sweep after it began) */
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
    conn_t *unwatched; /* the first waiter not yet in the epoll set; all after it are new too */
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
    conn_t **by_fd; /* the connections that outlived their accept, by descriptor */
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

/* _hub_tables.c: the protocol rules, the clock, the notes, the tables and the deadlines */
int check_name(const uint8_t *data, size_t n, size_t *name_len);
int make_reply(const struct sockaddr_storage *ss, uint8_t reply[8]);
double monotonic(void);
void note(Hub *h, int type, int code, long value, const source_t *source, const conn_t *conn);
conn_t *waiting_take(Hub *h, const uint8_t *name, size_t len);
void waiting_put(Hub *h, conn_t *c);
void waiting_forget(Hub *h, conn_t *c);
source_t *source_take(Hub *h, const uint8_t addr[16]);
void source_release(Hub *h, source_t *s);
void deadline_add(deadlines_t *list, conn_t *c, double now);
void deadline_forget(conn_t *c);

/* _hub_conn.c: one wake-up's events, the deadlines' expiry, the shutdown */
void maybe_resume(Hub *h, double now);
void handle(Hub *h, int count);
void expire(Hub *h, deadlines_t *list, int kind, double now);
void watch_waiters(Hub *h);
long close_everything(Hub *h);

#endif
