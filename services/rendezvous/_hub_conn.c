/*
 * _hub_conn.c: the C hub's connections through the protocol, rule for rule as hub.Hub moves them:
 * accept batches, the first read, the name, message 1, the pairing, the limits, the expiry.
 */
#include "_hub.h"

/* -- connections -- */

/* Forget c everywhere and close it; closing takes it out of the epoll set. */
static void close_conn(Hub *h, conn_t *c) {
    if (c->tracked) h->by_fd[c->fd] = NULL;
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

/* Write a reply. last: the close follows at once, so the reply waits for it (MSG_MORE) and the
 * reply and the FIN go in one segment: one segment less per connection for both ends. */
static int send_all(int fd, const uint8_t *data, size_t len, int last) {
    ssize_t sent;
    do sent = send(fd, data, len, MSG_DONTWAIT | MSG_NOSIGNAL | (last ? MSG_MORE : 0));
    while (sent < 0 && errno == EINTR);
    return sent == (ssize_t)len; /* a peer that reset or went is that pairing's loss alone */
}

/* Keep c in by_fd, so that its events and close_all find it. */
static int track(Hub *h, conn_t *c) {
    if (c->tracked) return 0;
    if ((size_t)c->fd >= h->by_fd_size) {
        size_t size = h->by_fd_size * 2 > (size_t)c->fd + 1 ? h->by_fd_size * 2 : (size_t)c->fd + 1;
        conn_t **fresh = realloc(h->by_fd, size * sizeof *fresh);
        if (!fresh) return -1;
        memset(fresh + h->by_fd_size, 0, (size - h->by_fd_size) * sizeof *fresh);
        h->by_fd = fresh;
        h->by_fd_size = size;
    }
    h->by_fd[c->fd] = c;
    c->tracked = 1;
    return 0;
}

/* Track c and add it to the epoll set: its next bytes or its close wake the hub. */
static int watch(Hub *h, conn_t *c) {
    if (track(h, c) < 0) return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = c->fd};
    if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) return -1;
    c->registered = 1;
    return 0;
}

static ssize_t first_read(int fd, uint8_t *buf) {
    ssize_t n;
    do n = recv(fd, buf, FIRST_READ, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    return n;
}

static int read_event(Hub *h, conn_t *c);

/* The name has come: wait for a partner, or pair with the one waiting (hub.Hub._named). A waiter
 * that has not joined the epoll set yet is asked first, as epoll would have told: gone, or sending
 * what it must not, it is settled as such and the newcomer waits instead. */
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
    conn_t *partner;
    do partner = waiting_take(h, c->name, len);
    while (partner && !partner->registered && !read_event(h, partner));
    if (!partner) {
        if (!send_all(c->fd, c->reply, 8, 0)) { /* message 1: your address as we see it */
            close_conn(h, c);
            return;
        }
        c->state = WAITING;
        waiting_put(h, c);
        if (track(h, c) < 0) {
            close_conn(h, c);
            return;
        }
        deadline_add(&h->waiters, c, monotonic());
        if (!c->registered && !h->waiters.unwatched) h->waiters.unwatched = c;
        return;
    }
    uint8_t both[16];
    memcpy(both, c->reply, 8);
    memcpy(both + 8, partner->reply, 8);
    partner->state = c->state = DONE;
    h->pairings_total++;                   /* before the sends: a pair that has its answer finds itself counted */
    send_all(c->fd, both, 16, 1);          /* message 1, then message 2: your peer's address */
    send_all(partner->fd, c->reply, 8, 1); /* the waiter's message 2 */
    close_conn(h, partner);
    close_conn(h, c);
}

/* A connection has something to say, or may have (hub.Hub._readable): its name, its close, or
 * bytes it must not send. Returns 1 when it had nothing to say after all (still open). */
static int read_event(Hub *h, conn_t *c) {
    uint8_t buf[FIRST_READ];
    ssize_t n = first_read(c->fd, buf);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 1;
    if (n <= 0) {
        if (c->state == WAITING) h->waiters_gone_total++;
        close_conn(h, c);
    } else if (c->state == NAMING) {
        deadline_forget(c);
        named(h, c, buf, (size_t)n);
    } else {
        reject(h, c, R_UNEXPECTED, -1);
    }
    return 0;
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

void maybe_resume(Hub *h, double now) {
    if (h->listening || h->closed || now < h->resume_at) return;
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = h->listen_fd};
    if (epoll_ctl(h->epfd, EPOLL_CTL_ADD, h->listen_fd, &ev) == 0) h->listening = 1;
}

/* One wake-up's events: every ready connection first, then the accepts, so that a waiter whose
 * close is in this batch is forgotten before a newcomer could meet it. Called with the lock. */
void handle(Hub *h, int count) {
    int accept = 0;
    for (int i = 0; i < count; i++) {
        int fd = h->events[i].data.fd;
        if (fd == h->listen_fd) accept = 1;
        else if (fd != h->wake_fd && (size_t)fd < h->by_fd_size && h->by_fd[fd]) read_event(h, h->by_fd[fd]);
    }
    if (accept) accept_batch(h);
    else h->stopped_at_limit = 0; /* the last batch emptied the queue after all */
    if (!h->listening) maybe_resume(h, monotonic());
}

void expire(Hub *h, deadlines_t *list, int kind, double now) {
    while (list->head && list->head->deadline <= now) {
        conn_t *c = list->head;
        deadline_forget(c);
        h->timeouts[kind]++;
        note(h, NOTE_TIMEOUT, kind, -1, c->source, c);
        close_conn(h, c);
    }
}

/* Every waiter that began since the last sweep joins the epoll set, so that a waiter leaving is
 * noticed within a sweep even when no partner comes (hub.Hub._watch_waiters). */
void watch_waiters(Hub *h) {
    conn_t *c = h->waiters.unwatched;
    h->waiters.unwatched = NULL;
    while (c) {
        conn_t *next = c->next;
        if (!c->registered && watch(h, c) < 0) close_conn(h, c);
        c = next;
    }
}

/* Close every connection the hub holds (all that are open between two wake-ups). */
long close_everything(Hub *h) {
    long closed = 0;
    for (size_t fd = 0; fd < h->by_fd_size; fd++)
        if (h->by_fd[fd]) {
            close_conn(h, h->by_fd[fd]);
            closed++;
        }
    return closed;
}
