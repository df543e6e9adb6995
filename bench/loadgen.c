/*
 * loadgen: a raw-protocol load generator for TCPunch rendezvous servers.
 *
 * Why C and not Python: a Python client saturates a core long before a Python server does, so
 * a Python load generator would measure itself. This one costs a few microseconds per pairing.
 *
 * Usage: loadgen HOST PORT SECONDS THREADS CONCURRENCY
 *
 * Each thread runs its own epoll loop with CONCURRENCY slots. A slot is one pairing in flight:
 * two non-blocking connections that send the same unique name ("lg-<pid>-<thread>-<n>"), read
 * message 1 and message 2 (8 bytes each), wait for the server's EOF and only then close, so that
 * TIME_WAIT lands on the server's side (it closes first) and never exhausts our ephemeral ports.
 * A pairing counts when each side's message 2 equals the other side's message 1 and each side's
 * message 1 carries its own local port; anything else is an error of some kind, the slot's
 * sockets are reset (SO_LINGER 0, again so that no TIME_WAIT stays on our side), and after a
 * short back-off the slot starts a new pairing. Nothing blocks: every wait is bounded by the
 * SECONDS deadline, and a pairing stuck for PAIR_TIMEOUT_S is abandoned as an error.
 *
 * Each successful pairing's latency (from the first connect to the second EOF) goes into a
 * histogram of 1 us buckets up to HIST_US (the last bucket holds everything slower), merged over
 * the threads at the end for p50 and p99.
 *
 * Output, one JSON line on stdout at the end:
 *   {"pairings": N, "errors": E, "elapsed_s": S, "pairings_per_s": R, "p50_ms": .., "p99_ms": ..,
 *    ..., "error_kinds": {...}}
 *
 * Build: gcc -O2 -Wall -Wextra -pthread -o loadgen loadgen.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MSG 8                 /* one server message */
#define PAIR_TIMEOUT_S 3.0    /* a pairing not done by then is abandoned (error "timeout") */
#define BACKOFF_S 0.005       /* pause of a slot after an error, so that failing connects cannot spin */
#define SCAN_INTERVAL_S 0.005 /* how often back-offs and stalled pairings are looked at */
#define MAX_EVENTS 512
#define HIST_US 100000        /* latency histogram: 1 us buckets up to 100 ms */

enum conn_state { C_CLOSED, C_CONNECTING, C_READING, C_DONE };

/* Error kinds, reported by name in the output. */
enum kind {
    K_SOCKET,        /* socket() failed (EMFILE, ENFILE...) */
    K_REFUSED,       /* ECONNREFUSED: nobody listening, or the backlog overflowed */
    K_ADDRNOTAVAIL,  /* EADDRNOTAVAIL: no free ephemeral port */
    K_CONNECT_OTHER, /* any other connect() failure */
    K_SEND,          /* the name could not be sent in one write */
    K_RESET,         /* ECONNRESET or another read error after connecting */
    K_EARLY_EOF,     /* the server closed before both messages arrived */
    K_EXTRA_DATA,    /* more than 16 bytes arrived */
    K_MISMATCH,      /* message 2 is not the peer's message 1, or message 1 is not our address */
    K_TIMEOUT,       /* the pairing did not finish within PAIR_TIMEOUT_S */
    K_COUNT
};
static const char *KIND_NAMES[K_COUNT] = {
    "socket", "refused", "addrnotavail", "connect_other", "send",
    "reset", "early_eof", "extra_data", "mismatch", "timeout",
};

typedef struct {
    int fd;
    int state;
    int got;                 /* bytes of the 16 received so far */
    uint8_t buf[2 * MSG];    /* message 1 then message 2 */
    struct sockaddr_in local;
} conn_t;

typedef struct {
    conn_t c[2];
    int busy;                /* a pairing is in flight */
    double started;
    double resume_at;        /* when idle: start the next pairing at this time */
    char name[64];
    int name_len;
} slot_t;

typedef struct {
    int id;
    int concurrency;
    double deadline;
    struct sockaddr_in server;
    uint64_t counter;
    uint64_t pairings;
    uint64_t errors;
    uint64_t kinds[K_COUNT];
    uint32_t *hist;          /* HIST_US + 1 buckets of pairing latency */
    int epfd;
    slot_t *slots;
    pthread_t thread;
} worker_t;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Close with an RST (SO_LINGER 0): used on error paths and at the hard stop, so that an
 * abandoned connection leaves no TIME_WAIT on our ephemeral port. */
static void reset_close(int fd) {
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

static void drop_slot(worker_t *w, slot_t *s) {
    for (int i = 0; i < 2; i++) {
        if (s->c[i].fd >= 0) {
            reset_close(s->c[i].fd);
            s->c[i].fd = -1;
        }
        s->c[i].state = C_CLOSED;
    }
    s->busy = 0;
    (void)w;
}

static void fail(worker_t *w, slot_t *s, enum kind k, double now) {
    drop_slot(w, s);
    w->errors++;
    w->kinds[k]++;
    s->resume_at = now + BACKOFF_S;
}

static enum kind connect_kind(int err) {
    if (err == ECONNREFUSED) return K_REFUSED;
    if (err == EADDRNOTAVAIL) return K_ADDRNOTAVAIL;
    return K_CONNECT_OTHER;
}

static uint64_t tag(int slot, int side) { return ((uint64_t)slot << 1) | (uint64_t)side; }

/* The connection is established: learn our local address and send the name in one write. */
static int send_name(worker_t *w, slot_t *s, int slot, int side) {
    conn_t *c = &s->c[side];
    socklen_t len = sizeof c->local;
    if (getsockname(c->fd, (struct sockaddr *)&c->local, &len) != 0) return K_CONNECT_OTHER;
    ssize_t n = send(c->fd, s->name, (size_t)s->name_len, MSG_NOSIGNAL);
    if (n != s->name_len) return (n < 0 && (errno == ECONNRESET || errno == EPIPE)) ? K_RESET : K_SEND;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u64 = tag(slot, side)};
    if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) return K_SOCKET;
    c->state = C_READING;
    return -1;
}

static void start_pair(worker_t *w, int slot, double now) {
    slot_t *s = &w->slots[slot];
    s->name_len = snprintf(s->name, sizeof s->name, "lg-%d-%d-%llu", (int)getpid(), w->id,
                           (unsigned long long)w->counter++);
    s->busy = 1;
    s->started = now;
    for (int side = 0; side < 2; side++) {
        conn_t *c = &s->c[side];
        c->got = 0;
        c->state = C_CLOSED;
        c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (c->fd < 0) {
            fail(w, s, K_SOCKET, now);
            return;
        }
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        int rc = connect(c->fd, (struct sockaddr *)&w->server, sizeof w->server);
        if (rc != 0 && errno != EINPROGRESS) {
            fail(w, s, connect_kind(errno), now);
            return;
        }
        struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = tag(slot, side)};
        if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
            fail(w, s, K_SOCKET, now);
            return;
        }
        c->state = C_CONNECTING;
        if (rc == 0) {
            int k = send_name(w, s, slot, side);
            if (k >= 0) {
                fail(w, s, (enum kind)k, now);
                return;
            }
        }
    }
}

/* Both sides saw EOF after 16 bytes: check the crossing of the messages. */
static void finish_pair(worker_t *w, slot_t *s, double now) {
    conn_t *a = &s->c[0], *b = &s->c[1];
    int ok = memcmp(a->buf + MSG, b->buf, MSG) == 0 && memcmp(b->buf + MSG, a->buf, MSG) == 0;
    for (int i = 0; i < 2 && ok; i++) {
        conn_t *c = &s->c[i];
        uint16_t port;
        memcpy(&port, c->buf + 4, 2);
        ok = memcmp(c->buf, &c->local.sin_addr.s_addr, 4) == 0 && port == c->local.sin_port &&
             c->buf[6] == 0 && c->buf[7] == 0;
    }
    if (!ok) {
        fail(w, s, K_MISMATCH, now);
        return;
    }
    w->pairings++;
    double us = (now - s->started) * 1e6;
    w->hist[us < HIST_US ? (int)us : HIST_US]++;
    s->busy = 0;
    s->resume_at = now; /* next pairing right away */
}

static void on_readable(worker_t *w, slot_t *s, int side, double now) {
    conn_t *c = &s->c[side];
    uint8_t tmp[64];
    for (;;) {
        ssize_t n = read(c->fd, tmp, sizeof tmp);
        if (n > 0) {
            if (c->got + n > 2 * MSG) {
                fail(w, s, K_EXTRA_DATA, now);
                return;
            }
            memcpy(c->buf + c->got, tmp, (size_t)n);
            c->got += (int)n;
            continue;
        }
        if (n == 0) {
            if (c->got < 2 * MSG) {
                fail(w, s, K_EARLY_EOF, now);
                return;
            }
            close(c->fd); /* after the server's FIN: its side holds the TIME_WAIT */
            c->fd = -1;
            c->state = C_DONE;
            if (s->c[1 - side].state == C_DONE) finish_pair(w, s, now);
            return;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        if (errno == EINTR) continue;
        fail(w, s, K_RESET, now);
        return;
    }
}

static void on_event(worker_t *w, uint64_t data, uint32_t events, double now) {
    int slot = (int)(data >> 1), side = (int)(data & 1);
    slot_t *s = &w->slots[slot];
    conn_t *c = &s->c[side];
    if (!s->busy || c->fd < 0) return; /* stale event for a slot already dropped */
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
        if (err != 0) {
            fail(w, s, connect_kind(err), now);
            return;
        }
        if (!(events & (EPOLLOUT | EPOLLIN))) return;
        int k = send_name(w, s, slot, side);
        if (k >= 0) fail(w, s, (enum kind)k, now);
        return;
    }
    if (c->state == C_READING) on_readable(w, s, side, now);
}

/* Start pairings whose back-off is over; abandon pairings that take too long. */
static void scan(worker_t *w, double now) {
    for (int i = 0; i < w->concurrency; i++) {
        slot_t *s = &w->slots[i];
        if (s->busy && now - s->started > PAIR_TIMEOUT_S) fail(w, s, K_TIMEOUT, now);
        if (!s->busy && now >= s->resume_at && now < w->deadline) start_pair(w, i, now);
    }
}

static void *run_worker(void *arg) {
    worker_t *w = arg;
    struct epoll_event events[MAX_EVENTS];
    double now = now_s(), next_scan = now;
    for (int i = 0; i < w->concurrency; i++) {
        w->slots[i].c[0].fd = w->slots[i].c[1].fd = -1;
        w->slots[i].resume_at = now;
    }
    while ((now = now_s()) < w->deadline) {
        if (now >= next_scan) {
            scan(w, now);
            next_scan = now + SCAN_INTERVAL_S;
        }
        double wait = next_scan - now;
        if (wait > w->deadline - now) wait = w->deadline - now;
        int timeout_ms = wait > 0 ? (int)(wait * 1000) + 1 : 0;
        int n = epoll_wait(w->epfd, events, MAX_EVENTS, timeout_ms);
        if (n < 0 && errno != EINTR) break;
        now = now_s();
        for (int i = 0; i < n; i++) on_event(w, events[i].data.u64, events[i].events, now);
        /* restart finished slots at once rather than at the next scan */
        for (int i = 0; i < n; i++) {
            int slot = (int)(events[i].data.u64 >> 1);
            slot_t *s = &w->slots[slot];
            if (!s->busy && now >= s->resume_at && now < w->deadline) start_pair(w, slot, now);
        }
    }
    for (int i = 0; i < w->concurrency; i++) /* hard stop: in-flight pairings count as neither */
        if (w->slots[i].busy) drop_slot(w, &w->slots[i]);
    return NULL;
}

/* The latency below which a fraction q of the pairings finished, in ms (bucket upper bounds). */
static double percentile_ms(const uint64_t *hist, uint64_t total, double q) {
    if (total == 0) return 0.0;
    uint64_t want = (uint64_t)(q * (double)total), seen = 0;
    if (want < 1) want = 1;
    for (int i = 0; i <= HIST_US; i++) {
        seen += hist[i];
        if (seen >= want) return (i + 1) / 1000.0;
    }
    return HIST_US / 1000.0;
}

static int usage(const char *argv0) {
    fprintf(stderr, "usage: %s HOST PORT SECONDS THREADS CONCURRENCY\n", argv0);
    return 2;
}

int main(int argc, char **argv) {
    if (argc != 6) return usage(argv[0]);
    const char *host = argv[1];
    int port = atoi(argv[2]);
    double seconds = atof(argv[3]);
    int threads = atoi(argv[4]), concurrency = atoi(argv[5]);
    if (port <= 0 || port > 65535 || seconds <= 0 || threads <= 0 || threads > 64 || concurrency <= 0 ||
        concurrency > 100000)
        return usage(argv[0]);
    struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &server.sin_addr) != 1) {
        fprintf(stderr, "loadgen: HOST must be an IPv4 address, got %s\n", host);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    alarm((unsigned)seconds + 30); /* last resort: never outlive the run by much, whatever happens */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    worker_t *workers = calloc((size_t)threads, sizeof *workers);
    if (!workers) return 1;
    double start = now_s(), deadline = start + seconds;
    int started = 0;
    for (int t = 0; t < threads; t++) {
        worker_t *w = &workers[t];
        w->id = t;
        w->concurrency = concurrency;
        w->deadline = deadline;
        w->server = server;
        w->slots = calloc((size_t)concurrency, sizeof *w->slots);
        w->hist = calloc(HIST_US + 1, sizeof *w->hist);
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (!w->slots || !w->hist || w->epfd < 0 || pthread_create(&w->thread, NULL, run_worker, w) != 0) {
            perror("loadgen: cannot start a worker");
            break;
        }
        started++;
    }
    uint64_t pairings = 0, errors = 0, kinds[K_COUNT] = {0};
    uint64_t *hist = calloc(HIST_US + 1, sizeof *hist);
    if (!hist) return 1;
    for (int t = 0; t < started; t++) {
        pthread_join(workers[t].thread, NULL);
        for (int i = 0; i <= HIST_US; i++) hist[i] += workers[t].hist[i];
        pairings += workers[t].pairings;
        errors += workers[t].errors;
        for (int k = 0; k < K_COUNT; k++) kinds[k] += workers[t].kinds[k];
    }
    double elapsed = now_s() - start;
    printf("{\"pairings\": %llu, \"errors\": %llu, \"elapsed_s\": %.3f, \"pairings_per_s\": %.1f, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"threads\": %d, \"concurrency\": %d, \"error_kinds\": {",
           (unsigned long long)pairings, (unsigned long long)errors, elapsed,
           elapsed > 0 ? (double)pairings / elapsed : 0.0, percentile_ms(hist, pairings, 0.50),
           percentile_ms(hist, pairings, 0.99), started, concurrency);
    for (int k = 0; k < K_COUNT; k++)
        printf("%s\"%s\": %llu", k ? ", " : "", KIND_NAMES[k], (unsigned long long)kinds[k]);
    printf("}}\n");
    fflush(stdout);
    return started == threads ? 0 : 1;
}
