/*
 * _hub_tables.c: the C hub's bookkeeping: the protocol's rules (shared with the module functions the
 * tests compare with protocol.py), the notes queued for Python's loggers, the waiting table, the
 * per-source counts and the deadline lists. See _hub.c for why the hub is in C at all.
 */
#include "_hub.h"

/* The labels of metrics.REJECTION_REASONS, TIMEOUT_KINDS and the note types, in enum order. */
const char *const REASONS[] = {"server_full", "source_limit", "accept_failed", "empty_name",
                                      "name_too_long", "unexpected_data", "no_ipv4_address", "shutdown"};
const char *const KINDS[] = {"name", "waiter_ttl"};
const char *const NOTE_TYPES[] = {"rejected", "timeout", "accept_failed"};

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
int check_name(const uint8_t *data, size_t n, size_t *name_len) {
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
int make_reply(const struct sockaddr_storage *ss, uint8_t reply[8]) {
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

double monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* time.monotonic()'s clock */
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

void note(Hub *h, int type, int code, long value, const source_t *source, const conn_t *conn) {
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
conn_t *waiting_take(Hub *h, const uint8_t *name, size_t len) {
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

void waiting_put(Hub *h, conn_t *c) {
    grow_waiting(h);
    conn_t **head = &h->waiting[waiter_slot(h, c->name, c->name_len, h->waiting_buckets)];
    c->next_waiter = *head;
    *head = c;
    h->waiting_count++;
}

void waiting_forget(Hub *h, conn_t *c) {
    conn_t **link = &h->waiting[waiter_slot(h, c->name, c->name_len, h->waiting_buckets)];
    for (; *link; link = &(*link)->next_waiter)
        if (*link == c) {
            *link = c->next_waiter;
            h->waiting_count--;
            return;
        }
}

source_t *source_take(Hub *h, const uint8_t addr[16]) {
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

void source_release(Hub *h, source_t *s) {
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

void deadline_add(deadlines_t *list, conn_t *c, double now) {
    c->deadline = now + list->timeout;
    c->list = list;
    c->next = NULL;
    c->prev = list->tail;
    if (list->tail) list->tail->next = c; else list->head = c;
    list->tail = c;
}

void deadline_forget(conn_t *c) {
    deadlines_t *list = c->list;
    if (!list) return;
    if (list->unwatched == c) list->unwatched = c->next;
    if (c->prev) c->prev->next = c->next; else list->head = c->next;
    if (c->next) c->next->prev = c->prev; else list->tail = c->prev;
    c->list = NULL;
}
