/*
 * tcpunch_baseline: a C rendezvous server of tcpunchd's design, the yardstick of the server bench.
 *
 * Why it exists: the project's server replaces TCPunch's C++ tcpunchd, so its throughput only
 * means something as a ratio to a server of that design measured in the same run, on the same
 * (shared, noisy) machine. This one is written from shared/PROTOCOL.md, not from tcpunchd's
 * source, and keeps its design: one thread, a blocking accept(), ONE blocking recv() of at most
 * 100 bytes for the name (cut at the first NUL), message 1 at once, then either keep the socket
 * as the name's waiter or send both message 2s and close both. Listen backlog 255, as tcpunchd's.
 *
 * What it leaves out of tcpunchd, each only making it faster or keeping it alive through a run:
 * the per-pairing log lines on stdout (tcpunchd writes and flushes six), std::map (a hash table
 * here), and the crash on SIGPIPE (MSG_NOSIGNAL here, so a load generator resetting its in-flight
 * pairs at the end of a round does not kill it). It has none of our server's hardening: a silent
 * client still blocks everyone, dead waiters are still paired.
 *
 * Usage: tcpunch_baseline HOST PORT   (PORT 0 picks a free one). Prints "listening HOST PORT" on
 * stdout once it accepts; stops on SIGTERM (the default action).
 *
 * Build: cc -O2 -Wall -Wextra -o tcpunch_baseline tcpunch_baseline.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define NAME_MAX_BYTES 100
#define BACKLOG 255
#define BUCKETS 65536 /* power of two */

typedef struct waiter {
    struct waiter *next;
    int fd;
    uint8_t msg[8]; /* its message 1, which is its partner's message 2 */
    size_t len;
    char name[NAME_MAX_BYTES];
} waiter_t;

static waiter_t *table[BUCKETS];

static uint32_t hash(const char *s, size_t n) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h & (BUCKETS - 1);
}

/* Remove and return the waiter of this name, or NULL. */
static waiter_t *take(const char *name, size_t len) {
    waiter_t **link = &table[hash(name, len)];
    for (; *link; link = &(*link)->next) {
        waiter_t *w = *link;
        if (w->len == len && memcmp(w->name, name, len) == 0) {
            *link = w->next;
            return w;
        }
    }
    return NULL;
}

static void put(int fd, const uint8_t msg[8], const char *name, size_t len) {
    waiter_t *w = malloc(sizeof *w);
    if (!w) {
        close(fd);
        return;
    }
    w->fd = fd;
    memcpy(w->msg, msg, 8);
    memcpy(w->name, name, len);
    w->len = len;
    uint32_t h = hash(name, len);
    w->next = table[h];
    table[h] = w;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
        return 2;
    }
    struct sockaddr_in bind_to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &bind_to.sin_addr) != 1) {
        fprintf(stderr, "tcpunch_baseline: HOST must be an IPv4 address\n");
        return 2;
    }
    int listener = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (listener < 0 || bind(listener, (struct sockaddr *)&bind_to, sizeof bind_to) != 0 ||
        listen(listener, BACKLOG) != 0) {
        perror("tcpunch_baseline: cannot listen");
        return 1;
    }
    socklen_t bound_len = sizeof bind_to;
    getsockname(listener, (struct sockaddr *)&bind_to, &bound_len);
    printf("listening %s %d\n", argv[1], ntohs(bind_to.sin_port));
    fflush(stdout);

    for (;;) {
        struct sockaddr_in peer;
        socklen_t peer_len = sizeof peer;
        int fd = accept(listener, (struct sockaddr *)&peer, &peer_len);
        if (fd < 0) continue; /* tcpunchd exits here; a baseline that survives EMFILE is kinder to the run */
        char name[NAME_MAX_BYTES];
        ssize_t n = recv(fd, name, sizeof name, 0);
        if (n <= 0) {
            close(fd);
            continue;
        }
        size_t len = strnlen(name, (size_t)n);
        uint8_t msg[8] = {0};
        memcpy(msg, &peer.sin_addr.s_addr, 4);
        memcpy(msg + 4, &peer.sin_port, 2);
        send(fd, msg, sizeof msg, MSG_NOSIGNAL); /* message 1: your address as seen here */
        waiter_t *other = take(name, len);
        if (!other) {
            put(fd, msg, name, len);
            continue;
        }
        send(other->fd, msg, sizeof msg, MSG_NOSIGNAL); /* message 2 to each: the other's address */
        close(other->fd);
        send(fd, other->msg, sizeof other->msg, MSG_NOSIGNAL);
        close(fd);
        free(other);
    }
}
