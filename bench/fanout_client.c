/*
 * fanout_client: the WebSocket load generator of bench/fanout.py (compiled at run time with gcc -O2).
 *
 * One process, one thread, one epoll loop over nonblocking sockets. It opens --conns connections to
 * the gateway (at most --ramp handshakes in flight), upgrades each (random Sec-WebSocket-Key, the
 * Sec-WebSocket-Accept checked), sends one masked subscribe frame per connection and then reads the
 * server's frames (2/4/10-byte headers, unmasked). Per connection it checks that the "seq" of every
 * delivery is exactly the previous one + 1 (a hole is a gap, a repeat or step back a duplicate; the
 * "conflated" list of a conflated delivery accounts for the seqs it stands for), counts deliveries
 * and answers server pings with pongs and close frames with a close. --probes connections, spread
 * evenly over the connection order (so over the gateway's fan-out order too, the last connection
 * included), record (seq, CLOCK_MONOTONIC receive time) of every delivery, written to --probe-out
 * on exit.
 *
 * The credential (an API key) comes from $FANOUT_TOKEN (or --token) and goes in ?token=.
 * Commands, one per stdin line, each answered with one JSON line on stdout:
 *   stats [TARGET]   counters; with TARGET, how many open connections reached seq TARGET and the
 *                    seqs still missing on the others ("behind")
 *   quit             the same, then the probe file is written and the process exits
 * SIGTERM/SIGINT/EOF on stdin and --max-seconds end it like quit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SCRATCH (4u << 20)
#define MAX_EVENTS 512
#define STDIN_TAG UINT64_MAX

enum { ST_IDLE, ST_CONNECTING, ST_UPGRADING, ST_SUBSCRIBING, ST_LIVE, ST_CLOSED, ST_FAILED };

typedef struct {
    int fd;
    uint8_t state, probe, want_out;
    int close_code;
    int64_t last_seq;
    uint64_t deliveries, gaps, dups, conflated, conflated_seqs, errors;
    uint64_t t_sub_sent, t_subscribed, t_last;
    char *in;
    uint32_t in_len, in_cap;
    char *out;
    uint32_t out_len, out_cap;
    char accept[32];
    int64_t *ps;
    uint64_t *pt;
    size_t pn, pcap;
} conn_t;

static const char *host = "127.0.0.1", *token = "", *channel = "", *probe_out = NULL;
static int port = 0, nconns = 1, nprobes = 0, ramp = 100;
static long long since = -1;
static double max_seconds = 600;
static conn_t *conns;
static int epfd, started, pending, nlive, nfailed, nclosed, nlost;
static char *scratch;
static volatile sig_atomic_t stop_flag;
static uint64_t rng_state;
static char stdin_buf[4096];
static size_t stdin_len;
static int close_hist[16][2], close_kinds;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t rnd(void) { /* xorshift64* */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

/* -- SHA-1 and base64, for Sec-WebSocket-Accept ---------------------------------------------- */

static uint32_t rol(uint32_t v, int n) { return (v << n) | (v >> (32 - n)); }

static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    uint8_t *buf = calloc(total, 1);
    memcpy(buf, msg, len);
    buf[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) buf[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)buf[off + 4 * i] << 24 | (uint32_t)buf[off + 4 * i + 1] << 16 |
                   (uint32_t)buf[off + 4 * i + 2] << 8 | buf[off + 4 * i + 3];
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) f = (b & c) | (~b & d), k = 0x5A827999;
            else if (i < 40) f = b ^ c ^ d, k = 0x6ED9EBA1;
            else if (i < 60) f = (b & c) | (b & d) | (c & d), k = 0x8F1BBCDC;
            else f = b ^ c ^ d, k = 0xCA62C1D6;
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d, d = c, c = rol(b, 30), b = a, a = t;
        }
        h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e;
    }
    free(buf);
    for (int i = 0; i < 5; i++)
        for (int j = 0; j < 4; j++) out[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
}

static void base64(const uint8_t *in, size_t len, char *out) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < len ? (uint32_t)in[i + 1] << 8 : 0) |
                     (i + 2 < len ? in[i + 2] : 0);
        out[o++] = tab[(v >> 18) & 63];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? tab[v & 63] : '=';
    }
    out[o] = 0;
}

/* -- writing ---------------------------------------------------------------------------------- */

static void set_events(conn_t *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.u64 = (uint64_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void queue_out(conn_t *c, const char *data, size_t len) {
    if (c->out_len + len > c->out_cap) {
        c->out_cap = (uint32_t)((c->out_len + len) * 2);
        c->out = realloc(c->out, c->out_cap);
    }
    memcpy(c->out + c->out_len, data, len);
    c->out_len += (uint32_t)len;
    if (!c->want_out) {
        c->want_out = 1;
        set_events(c, EPOLLIN | EPOLLOUT);
    }
}

static void send_raw(conn_t *c, const char *data, size_t len) {
    if (c->out_len) {
        queue_out(c, data, len);
        return;
    }
    ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
    if (n < 0) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) return; /* the read side notices */
        n = 0;
    }
    if ((size_t)n < len) queue_out(c, data + n, len - (size_t)n);
}

static void flush_out(conn_t *c) {
    while (c->out_len) {
        ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
        if (n <= 0) return;
        memmove(c->out, c->out + n, c->out_len - (size_t)n);
        c->out_len -= (uint32_t)n;
    }
    if (c->want_out) {
        c->want_out = 0;
        set_events(c, EPOLLIN);
    }
}

/* A masked client frame (RFC 6455 5.3). */
static void send_frame(conn_t *c, int opcode, const char *payload, size_t len) {
    char frame[16 + 512];
    if (len > 512) len = 512;
    size_t h = 0;
    frame[h++] = (char)(0x80 | opcode);
    if (len < 126) {
        frame[h++] = (char)(0x80 | len);
    } else {
        frame[h++] = (char)(0x80 | 126);
        frame[h++] = (char)(len >> 8);
        frame[h++] = (char)(len & 0xff);
    }
    uint32_t key = (uint32_t)rnd();
    uint8_t mask[4] = {(uint8_t)key, (uint8_t)(key >> 8), (uint8_t)(key >> 16), (uint8_t)(key >> 24)};
    memcpy(frame + h, mask, 4);
    h += 4;
    for (size_t i = 0; i < len; i++) frame[h + i] = (char)(payload[i] ^ mask[i & 3]);
    send_raw(c, frame, h + len);
}

/* -- connection lifecycle --------------------------------------------------------------------- */

static void finish_pending(conn_t *c) {
    if (c->state == ST_CONNECTING || c->state == ST_UPGRADING || c->state == ST_SUBSCRIBING) pending--;
}

static void drop(conn_t *c, int new_state) {
    finish_pending(c);
    if (c->state == ST_LIVE) {
        nlive--;
        if (new_state == ST_CLOSED) nclosed++;
    }
    if (new_state == ST_FAILED) nfailed++;
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    c->state = (uint8_t)new_state;
    free(c->in);
    c->in = NULL;
    c->in_len = c->in_cap = 0;
}

static void note_close(int code) {
    for (int i = 0; i < close_kinds; i++)
        if (close_hist[i][0] == code) {
            close_hist[i][1]++;
            return;
        }
    if (close_kinds < 16) close_hist[close_kinds][0] = code, close_hist[close_kinds++][1] = 1;
}

static void start_connection(int i) {
    conn_t *c = &conns[i];
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        c->state = ST_FAILED;
        nfailed++;
        return;
    }
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &addr.sin_addr);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = ST_CONNECTING;
    pending++;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        drop(c, ST_FAILED);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u64 = (uint64_t)i};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void start_more(void) {
    while (started < nconns && pending < ramp) start_connection(started++);
}

static void send_upgrade(conn_t *c) {
    uint8_t raw[16];
    for (int i = 0; i < 16; i += 8) {
        uint64_t r = rnd();
        memcpy(raw + i, &r, 8);
    }
    char key[32], req[2048];
    base64(raw, 16, key);
    char concat[96];
    int n = snprintf(concat, sizeof concat, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    uint8_t digest[20];
    sha1((const uint8_t *)concat, (size_t)n, digest);
    base64(digest, 20, c->accept);
    int len = snprintf(req, sizeof req,
                       "GET /ws?token=%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                       token, host, port, key);
    c->state = ST_UPGRADING;
    send_raw(c, req, (size_t)len);
    if (!c->out_len) set_events(c, EPOLLIN);
}

static void send_subscribe(conn_t *c) {
    char msg[512];
    int n;
    if (since >= 0)
        n = snprintf(msg, sizeof msg,
                     "{\"type\":\"subscribe\",\"id\":\"1\",\"data\":{\"channel\":\"%s\",\"since\":%lld}}",
                     channel, since);
    else
        n = snprintf(msg, sizeof msg, "{\"type\":\"subscribe\",\"id\":\"1\",\"data\":{\"channel\":\"%s\"}}",
                     channel);
    c->state = ST_SUBSCRIBING;
    c->t_sub_sent = now_ns();
    send_frame(c, 0x1, msg, (size_t)n);
}

/* -- reading ---------------------------------------------------------------------------------- */

static int64_t parse_int_after(const char *p, size_t len, const char *key, size_t keylen, int *found) {
    const char *at = memmem(p, len, key, keylen);
    *found = 0;
    if (!at) return 0;
    at += keylen;
    const char *end = p + len;
    int64_t v = 0;
    int any = 0;
    while (at < end && *at >= '0' && *at <= '9') v = v * 10 + (*at++ - '0'), any = 1;
    *found = any;
    return v;
}

static void on_delivery(conn_t *c, const char *p, size_t len, uint64_t now) {
    const char *data = memmem(p, len, "\"data\":{", 8);
    if (!data) return;
    size_t off = (size_t)(data - p);
    int found;
    int64_t seq = parse_int_after(data, len - off, "\"seq\":", 6, &found);
    if (!found) return;
    uint64_t skipped = 0;
    if (len > 16 && p[len - 2] == ']') { /* {..., "conflated":[s1,s2,...]} */
        const char *cf = memmem(p, len, ",\"conflated\":[", 14);
        if (cf) {
            c->conflated++;
            for (const char *q = cf + 14; q < p + len && *q != ']'; q++)
                if (*q == ',' || q == cf + 14) skipped++;
            c->conflated_seqs += skipped;
        }
    }
    c->deliveries++;
    c->t_last = now;
    if (seq <= c->last_seq) {
        c->dups++;
    } else {
        int64_t hole = seq - c->last_seq - 1 - (int64_t)skipped;
        if (hole > 0) c->gaps += (uint64_t)hole;
        c->last_seq = seq;
    }
    if (c->probe) {
        if (c->pn == c->pcap) {
            c->pcap = c->pcap ? c->pcap * 2 : 4096;
            c->ps = realloc(c->ps, c->pcap * sizeof *c->ps);
            c->pt = realloc(c->pt, c->pcap * sizeof *c->pt);
        }
        c->ps[c->pn] = seq;
        c->pt[c->pn++] = now;
    }
}

static void on_text(conn_t *c, const char *p, size_t len, uint64_t now) {
    if (len > 9 && memcmp(p, "{\"type\":\"", 9) == 0) {
        const char *t = p + 9;
        size_t rest = len - 9;
        if (rest > 11 && memcmp(t, "subscribed\"", 11) == 0) {
            int found;
            int64_t last = parse_int_after(p, len, "\"lastSeq\":", 10, &found);
            if (c->state == ST_SUBSCRIBING) {
                c->last_seq = since >= 0 ? since : (found ? last : 0);
                c->t_subscribed = now;
                c->state = ST_LIVE;
                pending--;
                nlive++;
            }
            return;
        }
        if (rest > 6 && memcmp(t, "error\"", 6) == 0) {
            c->errors++;
            static int shown;
            if (shown++ < 5) fprintf(stderr, "fanout_client: server error: %.*s\n", (int)len, p);
            if (c->state == ST_SUBSCRIBING) drop(c, ST_FAILED);
            return;
        }
        if ((rest > 5 && memcmp(t, "pong\"", 5) == 0) || (rest > 13 && memcmp(t, "unsubscribed\"", 13) == 0))
            return;
    }
    on_delivery(c, p, len, now);
}

/* Parse whole frames from buf[0..len); return the bytes consumed (-1: the connection was dropped). */
static long parse_frames(conn_t *c, char *buf, size_t len, uint64_t now) {
    size_t pos = 0;
    while (len - pos >= 2) {
        uint8_t b0 = (uint8_t)buf[pos], b1 = (uint8_t)buf[pos + 1];
        size_t hdr = 2;
        uint64_t plen = b1 & 0x7f;
        if (plen == 126) {
            if (len - pos < 4) break;
            plen = (uint64_t)(uint8_t)buf[pos + 2] << 8 | (uint8_t)buf[pos + 3];
            hdr = 4;
        } else if (plen == 127) {
            if (len - pos < 10) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = plen << 8 | (uint8_t)buf[pos + 2 + i];
            hdr = 10;
        }
        if ((b1 & 0x80) || plen > SCRATCH / 2 || !(b0 & 0x80)) { /* masked, huge or fragmented */
            fprintf(stderr, "fanout_client: unexpected frame header %02x %02x (length %llu)\n", b0, b1,
                    (unsigned long long)plen);
            c->errors++;
            drop(c, ST_FAILED);
            return -1;
        }
        if (len - pos < hdr + plen) break;
        char *payload = buf + pos + hdr;
        int opcode = b0 & 0x0f;
        if (opcode == 0x1) {
            on_text(c, payload, (size_t)plen, now);
            if (c->fd < 0) return -1;
        } else if (opcode == 0x9) {
            send_frame(c, 0xA, payload, (size_t)plen);
        } else if (opcode == 0x8) {
            int code = plen >= 2 ? ((uint8_t)payload[0] << 8 | (uint8_t)payload[1]) : 1005;
            c->close_code = code;
            note_close(code);
            char reply[2] = {(char)(code >> 8), (char)(code & 0xff)};
            send_frame(c, 0x8, reply, 2);
            drop(c, c->state == ST_LIVE ? ST_CLOSED : ST_FAILED);
            return -1;
        }
        pos += hdr + (size_t)plen;
    }
    return (long)pos;
}

static void keep_rest(conn_t *c, const char *buf, size_t rest) {
    if (rest > c->in_cap) {
        c->in_cap = (uint32_t)(rest < 4096 ? 4096 : rest * 2);
        free(c->in);
        c->in = malloc(c->in_cap);
    }
    memmove(c->in, buf, rest);
    c->in_len = (uint32_t)rest;
}

static void on_readable(conn_t *c) {
    for (int round = 0; round < 4 && c->fd >= 0; round++) {
        size_t have = c->in_len;
        if (have) memcpy(scratch, c->in, have);
        size_t space = SCRATCH - have;
        ssize_t n = recv(c->fd, scratch + have, space, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            if (c->state == ST_LIVE) {
                nlost++;
                note_close(-1);
            }
            drop(c, c->state == ST_LIVE ? ST_CLOSED : ST_FAILED);
            return;
        }
        if (n < 0) return;
        uint64_t now = now_ns();
        size_t len = have + (size_t)n;
        char *buf = scratch;
        if (c->state == ST_UPGRADING) {
            char *end = memmem(buf, len, "\r\n\r\n", 4);
            if (!end) {
                keep_rest(c, buf, len);
                if (len > 8192) drop(c, ST_FAILED);
                return;
            }
            *end = 0;
            if (strncmp(buf, "HTTP/1.1 101", 12) != 0 || !strcasestr(buf, c->accept)) {
                static int shown;
                if (shown++ < 3) fprintf(stderr, "fanout_client: upgrade refused: %.200s\n", buf);
                drop(c, ST_FAILED);
                return;
            }
            size_t head = (size_t)(end - buf) + 4;
            buf += head;
            len -= head;
            send_subscribe(c);
        }
        long used = parse_frames(c, buf, len, now);
        if (used < 0) return;
        keep_rest(c, buf + used, len - (size_t)used);
        if ((size_t)n < space) return;
    }
}

static void on_writable(conn_t *c) {
    if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            static int shown;
            if (shown++ < 3) fprintf(stderr, "fanout_client: connect: %s\n", strerror(err));
            drop(c, ST_FAILED);
            return;
        }
        send_upgrade(c);
        return;
    }
    flush_out(c);
}

/* -- reporting -------------------------------------------------------------------------------- */

static void report(const char *kind, long long target) {
    uint64_t deliveries = 0, gaps = 0, dups = 0, conflated = 0, conflated_seqs = 0, errors = 0;
    uint64_t last_max = 0, sub_sent_min = 0, subscribed_max = 0, behind = 0;
    uint64_t dmin = UINT64_MAX, dmax = 0;
    int64_t seq_min = INT64_MAX, seq_max = 0;
    int reached = 0;
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        deliveries += c->deliveries, gaps += c->gaps, dups += c->dups, errors += c->errors;
        conflated += c->conflated, conflated_seqs += c->conflated_seqs;
        if (c->t_last > last_max) last_max = c->t_last;
        if (c->t_sub_sent && (!sub_sent_min || c->t_sub_sent < sub_sent_min)) sub_sent_min = c->t_sub_sent;
        if (c->t_subscribed > subscribed_max) subscribed_max = c->t_subscribed;
        if (c->state != ST_LIVE) continue;
        if (c->deliveries < dmin) dmin = c->deliveries;
        if (c->deliveries > dmax) dmax = c->deliveries;
        if (c->last_seq < seq_min) seq_min = c->last_seq;
        if (c->last_seq > seq_max) seq_max = c->last_seq;
        if (target >= 0) {
            if (c->last_seq >= target) reached++;
            else behind += (uint64_t)(target - c->last_seq);
        }
    }
    if (seq_min == INT64_MAX) seq_min = 0;
    if (dmin == UINT64_MAX) dmin = 0;
    printf("{\"kind\":\"%s\",\"now_ns\":%llu,\"conns\":%d,\"started\":%d,\"pending\":%d,\"live\":%d,"
           "\"failed\":%d,\"closed\":%d,\"lost\":%d,\"deliveries\":%llu,\"gaps\":%llu,\"dups\":%llu,"
           "\"conflated\":%llu,\"conflated_seqs\":%llu,\"errors\":%llu,\"seq_min\":%lld,\"seq_max\":%lld,"
           "\"per_conn_min\":%llu,\"per_conn_max\":%llu,\"last_ns\":%llu,\"sub_sent_ns\":%llu,"
           "\"subscribed_ns\":%llu,\"target\":%lld,\"reached\":%d,\"behind\":%llu,\"close_codes\":{",
           kind, (unsigned long long)now_ns(), nconns, started, pending, nlive, nfailed, nclosed, nlost,
           (unsigned long long)deliveries, (unsigned long long)gaps, (unsigned long long)dups,
           (unsigned long long)conflated, (unsigned long long)conflated_seqs, (unsigned long long)errors,
           (long long)seq_min, (long long)seq_max, (unsigned long long)dmin, (unsigned long long)dmax,
           (unsigned long long)last_max, (unsigned long long)sub_sent_min, (unsigned long long)subscribed_max,
           target, reached, (unsigned long long)behind);
    for (int i = 0; i < close_kinds; i++)
        printf("%s\"%d\":%d", i ? "," : "", close_hist[i][0], close_hist[i][1]);
    printf("}}\n");
    fflush(stdout);
}

static void write_probes(void) {
    if (!probe_out) return;
    FILE *f = fopen(probe_out, "w");
    if (!f) {
        perror("fanout_client: probe file");
        return;
    }
    for (int i = 0; i < nconns; i++)
        for (size_t k = 0; k < conns[i].pn; k++)
            fprintf(f, "%d %lld %llu\n", i, (long long)conns[i].ps[k], (unsigned long long)conns[i].pt[k]);
    fclose(f);
}

/* Handle complete stdin lines; return 1 when told to quit. */
static int on_stdin(void) {
    ssize_t n = read(0, stdin_buf + stdin_len, sizeof stdin_buf - 1 - stdin_len);
    if (n <= 0) return 1;
    stdin_len += (size_t)n;
    char *line = stdin_buf, *nl;
    while ((nl = memchr(line, '\n', stdin_len - (size_t)(line - stdin_buf)))) {
        *nl = 0;
        if (strncmp(line, "quit", 4) == 0) return 1;
        if (strncmp(line, "stats", 5) == 0) {
            long long target = line[5] == ' ' ? atoll(line + 6) : -1;
            report("stats", target);
        }
        line = nl + 1;
    }
    stdin_len -= (size_t)(line - stdin_buf);
    memmove(stdin_buf, line, stdin_len);
    return 0;
}

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void usage(void) {
    fprintf(stderr, "usage: FANOUT_TOKEN=T fanout_client --port P --channel C [--conns N] [--probes K] [--since S]\n"
                    "                     [--ramp R] [--probe-out FILE] [--max-seconds S] [--host ADDR]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) usage();
        if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--token")) token = v;
        else if (!strcmp(a, "--channel")) channel = v;
        else if (!strcmp(a, "--conns")) nconns = atoi(v);
        else if (!strcmp(a, "--probes")) nprobes = atoi(v);
        else if (!strcmp(a, "--since")) since = atoll(v);
        else if (!strcmp(a, "--ramp")) ramp = atoi(v);
        else if (!strcmp(a, "--probe-out")) probe_out = v;
        else if (!strcmp(a, "--max-seconds")) max_seconds = atof(v);
        else usage();
        i++;
    }
    if (!*token && getenv("FANOUT_TOKEN")) token = getenv("FANOUT_TOKEN"); /* kept off the command line */
    if (!port || !*channel || nconns < 1 || ramp < 1) usage();
    if (getrandom(&rng_state, sizeof rng_state, 0) != sizeof rng_state || !rng_state)
        rng_state = now_ns() | 1;
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    conns = calloc((size_t)nconns, sizeof *conns);
    scratch = malloc(SCRATCH);
    for (int i = 0; i < nconns; i++) /* probes spread evenly over the connection order, the last included */
        conns[i].fd = -1, conns[i].probe = (long)(i + 1) * nprobes / nconns != (long)i * nprobes / nconns;
    epfd = epoll_create1(EPOLL_CLOEXEC);
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event sev = {.events = EPOLLIN, .data.u64 = STDIN_TAG};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev);
    uint64_t deadline = now_ns() + (uint64_t)(max_seconds * 1e9);
    struct epoll_event evs[MAX_EVENTS];
    int quit = 0;
    start_more();
    while (!quit && !stop_flag && now_ns() < deadline) {
        int n = epoll_wait(epfd, evs, MAX_EVENTS, 100);
        for (int k = 0; k < n; k++) {
            if (evs[k].data.u64 == STDIN_TAG) {
                quit |= on_stdin();
                continue;
            }
            conn_t *c = &conns[evs[k].data.u64];
            if (c->fd < 0) continue;
            uint32_t e = evs[k].events;
            if (e & EPOLLOUT) on_writable(c);
            if (c->fd >= 0 && (e & (EPOLLIN | EPOLLERR | EPOLLHUP))) {
                if (c->state == ST_CONNECTING && (e & (EPOLLERR | EPOLLHUP))) on_writable(c);
                else on_readable(c);
            }
        }
        start_more();
    }
    report("final", -1);
    write_probes();
    return 0;
}
