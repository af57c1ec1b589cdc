/*
 * A member of an asyncbus AF_UNIX bus that is not asyncbus: plain C, POSIX and
 * Linux calls only, written from docs/protocol.md ("AF_UNIX buses"). The test
 * tests/test_unix_c_peer.py runs it against asyncbus.
 *
 *   unix_peer URL [--name MEMBER] [--subscribe PATTERN]... [--policy POLICY]
 *             [--receive N] [--until TEXT] [--hold]
 *             [--publish TOPIC] [--count M] [--size BYTES[,BYTES]...] [--subscribers K]
 *             [--deadline SECONDS]
 *
 * URL is unix:@NAME, unix:///DIR, seqpacket:@NAME or seqpacket:///DIR. The peer
 * joins the bus (HELLO with REPLY to every member it finds) and serves it:
 *
 *   1. with --hold, once a peer is verified, it prints "held" and stops reading
 *      the bus until a line arrives on stdin;
 *   2. it receives N messages (or, with --until, up to one whose payload is TEXT),
 *      printing each as "msg SEQ TOPIC LENGTH HEX";
 *   3. it waits until K verified peers subscribe to TOPIC, then publishes M messages
 *      on it, waiting for room (POLLOUT) when a peer is full: message i has the i-th
 *      size of the list (cycling), and its payload byte k is (7 * i + k) mod 256;
 *   4. it says BYE to every peer, closes, removes its socket file, prints "done".
 *
 * Other lines on stdout: "ready ADDRESS", "verified ADDRESS", "subscribed ADDRESS
 * COUNT", "lost ADDRESS", "left ADDRESS", "published M". Diagnostics go to stderr.
 * Exit status: 0 done, 1 system error, 2 usage, 3 deadline passed.
 *
 * Deliberately small: it accepts only its own effective uid (no allow lists),
 * announces one policy for all its patterns (exact, or glob if a pattern has any
 * of *?[), keeps one unfinished fragmented message per source, and blocks on a
 * full peer instead of queueing for it. Defaults: --receive 0, --count 0,
 * --size 8, --subscribers 1, --deadline 20, --name c-PID.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* docs/protocol.md, "Frames" */
#define MAGIC_LC02 0x4C433032u
#define MAGIC_LC03 0x4C433033u
#define MAGIC_HELLO 0x4142484Cu
#define MAGIC_SUBSCRIBE 0x41425342u
#define MAGIC_BYE 0x41424259u
#define HELLO_REPLY 0x01
#define MAX_CHANNEL 63
#define MAX_SHORT_PAYLOAD 65499 /* channel + NUL + payload in one LC02 frame */
#define FRAGMENT_PAYLOAD 65487  /* bytes after the 20-byte LC03 header */
#define MAX_FRAME 65507
#define RECEIVE_BUFFER 65536
#define MAX_ADDRESS 108 /* sizeof(sockaddr_un.sun_path) */
#define MAX_MESSAGE (16u << 20) /* what this test peer reassembles */

#define MAX_PEERS 64
#define MAX_SOURCES 128
#define MAX_PATTERNS 16

struct peer {
    int used;
    unsigned char address[MAX_ADDRESS];
    size_t address_length;
    int verified;
    int link;              /* our socket connected to its receiving socket, or -1 */
    uint32_t seq;          /* sequence number of the next message for it */
    unsigned char *subscribe; /* its last SUBSCRIBE frame, NULL before the first */
};

struct source {
    int used;
    struct sockaddr_un name; /* unix: the sender's (link's) address */
    socklen_t name_length;
    int fd;                  /* seqpacket: the accepted connection; unix: -1 */
    uid_t uid;               /* seqpacket: SO_PEERCRED at accept */
    int peer;                /* the peer its HELLO named, or -1 */
    /* a fragmented message being put back together */
    int assembling;
    uint32_t fragment_seq, fragment_size, fragment_got;
    uint16_t fragment_count, fragment_next;
    char fragment_channel[MAX_CHANNEL + 1];
    unsigned char *fragment_data;
};

static int seqpacket;       /* 0: unix: (SOCK_DGRAM), 1: seqpacket: */
static int abstract;        /* an abstract bus (else a directory bus) */
static char bus_name[65];   /* abstract: NAME */
static char bus_dir[128];   /* directory bus: DIR */
static unsigned char own[MAX_ADDRESS];
static size_t own_length;
static int receiver = -1;   /* receiving socket (unix:) or listener (seqpacket:) */
static char hidden[MAX_ADDRESS + 1]; /* directory bus: bound here until ready, then renamed */
static struct peer peers[MAX_PEERS];
static struct source sources[MAX_SOURCES];
static const char *patterns[MAX_PATTERNS];
static int pattern_count;
static int policy;          /* announced with every pattern */
static double deadline;
static unsigned char frame[RECEIVE_BUFFER];
static long received;
static const char *until;   /* --until: stop after a message with this payload */
static int until_seen;

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void cleanup(void)
{
    for (int i = 0; i < MAX_PEERS; i++)
        if (peers[i].used && peers[i].link >= 0)
            close(peers[i].link);
    for (int i = 0; i < MAX_SOURCES; i++)
        if (sources[i].used && sources[i].fd >= 0)
            close(sources[i].fd);
    if (receiver >= 0)
        close(receiver);
    if (hidden[0])
        unlink(hidden); /* died while setting up */
    else if (!abstract && own_length > 0)
        unlink((const char *)own); /* own is NUL-terminated for a path */
}

static void die(int status, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fprintf(stderr, "unix_peer: ");
    vfprintf(stderr, format, args);
    fprintf(stderr, "\n");
    va_end(args);
    cleanup();
    exit(status);
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static void put16(unsigned char *p, uint16_t v)
{
    p[0] = v >> 8; p[1] = v;
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint16_t get16(const unsigned char *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}

/* An address as people write it: "@" for an abstract name's leading NUL. */
static const char *show(const unsigned char *address, size_t length)
{
    static char text[MAX_ADDRESS + 2];
    size_t i = 0;
    for (; i < length && i < MAX_ADDRESS; i++)
        text[i] = address[i] ? (char)address[i] : '@';
    text[i] = '\0';
    return text;
}

/* sockaddr_un for an address, and its exact length (no padding: docs "Bus addresses"). */
static socklen_t sockaddr_of(struct sockaddr_un *sa, const unsigned char *address, size_t length)
{
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    memcpy(sa->sun_path, address, length);
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + length);
}

/* Our own uid as the kernel reports it: real in SCM_CREDENTIALS, effective in SO_PEERCRED. */
static int allowed(uid_t uid)
{
    return uid == (seqpacket ? geteuid() : getuid());
}

/* -- peers ----------------------------------------------------------------- */

static int find_peer(const unsigned char *address, size_t length)
{
    for (int i = 0; i < MAX_PEERS; i++)
        if (peers[i].used && peers[i].address_length == length &&
            memcmp(peers[i].address, address, length) == 0)
            return i;
    return -1;
}

static int add_peer(const unsigned char *address, size_t length)
{
    for (int i = 0; i < MAX_PEERS; i++) {
        if (!peers[i].used) {
            memset(&peers[i], 0, sizeof peers[i]);
            peers[i].used = 1;
            memcpy(peers[i].address, address, length);
            peers[i].address_length = length;
            peers[i].link = -1;
            return i;
        }
    }
    die(1, "more than %d peers", MAX_PEERS);
    return -1;
}

static void forget_peer(int p, const char *why)
{
    struct peer *peer = &peers[p];
    if (!peer->used)
        return;
    printf("%s %s\n", why, show(peer->address, peer->address_length));
    if (peer->link >= 0)
        close(peer->link);
    free(peer->subscribe);
    peer->used = 0;
    for (int i = 0; i < MAX_SOURCES; i++)
        if (sources[i].used && sources[i].peer == p)
            sources[i].peer = -1;
}

/* Connect a link to a peer's receiving socket ("Sockets"). Returns 0 or -1. */
static int open_link(int p)
{
    struct peer *peer = &peers[p];
    struct sockaddr_un sa;
    socklen_t length = sockaddr_of(&sa, peer->address, peer->address_length);
    int type = seqpacket ? SOCK_SEQPACKET : SOCK_DGRAM;
    int fd = socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die(1, "socket: %s", strerror(errno));
    if (!seqpacket) {
        /* Credentials on every datagram, and autobind: a source name of its own. */
        int on = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) < 0)
            die(1, "SO_PASSCRED: %s", strerror(errno));
    }
    if (connect(fd, (struct sockaddr *)&sa, length) < 0) {
        fprintf(stderr, "unix_peer: connect %s: %s\n",
                show(peer->address, peer->address_length), strerror(errno));
        close(fd);
        return -1;
    }
    if (seqpacket) {
        struct ucred cred;
        socklen_t size = sizeof cred;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) < 0 || !allowed(cred.uid)) {
            fprintf(stderr, "unix_peer: refused listener %s\n",
                    show(peer->address, peer->address_length));
            close(fd);
            return -1;
        }
    }
    peer->link = fd;
    return 0;
}

/* Send one frame on a peer's link, waiting for room ("Flow control"). 0, or -1 if lost. */
static int send_frame(int p, const unsigned char *data, size_t length)
{
    struct peer *peer = &peers[p];
    for (;;) {
        if (send(peer->link, data, length, MSG_NOSIGNAL) >= 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            struct pollfd pfd = {.fd = peer->link, .events = POLLOUT};
            double left = deadline - now();
            if (left <= 0)
                die(3, "deadline passed waiting for room at %s",
                    show(peer->address, peer->address_length));
            if (poll(&pfd, 1, (int)(left * 1000) + 1) < 0 && errno != EINTR)
                die(1, "poll: %s", strerror(errno));
            continue;
        }
        if (errno == ECONNREFUSED || errno == ENOENT || errno == EPIPE ||
            errno == ECONNRESET || errno == ENOTCONN) {
            forget_peer(p, "lost");
            return -1;
        }
        die(1, "send to %s: %s", show(peer->address, peer->address_length), strerror(errno));
    }
}

static int send_hello(int p, int reply)
{
    unsigned char hello[8 + MAX_ADDRESS];
    put32(hello, MAGIC_HELLO);
    hello[4] = 1; /* version */
    hello[5] = reply ? HELLO_REPLY : 0;
    put16(hello + 6, (uint16_t)own_length);
    memcpy(hello + 8, own, own_length);
    return send_frame(p, hello, 8 + own_length);
}

static int send_subscribe(int p)
{
    unsigned char subscribe[6 + MAX_PATTERNS * (4 + 256)];
    size_t at = 6;
    put32(subscribe, MAGIC_SUBSCRIBE);
    put16(subscribe + 4, (uint16_t)pattern_count);
    for (int i = 0; i < pattern_count; i++) {
        size_t n = strlen(patterns[i]);
        subscribe[at] = strpbrk(patterns[i], "*?[") ? 2 : 1; /* glob : exact */
        subscribe[at + 1] = (unsigned char)policy;
        put16(subscribe + at + 2, (uint16_t)n);
        memcpy(subscribe + at + 4, patterns[i], n);
        at += 4 + n;
    }
    return send_frame(p, subscribe, at);
}

/* Does a peer's last SUBSCRIBE match a topic? (Checked when it arrived.) */
static int wants(const struct peer *peer, const char *topic)
{
    if (!peer->subscribe)
        return 0;
    const unsigned char *entry = peer->subscribe + 6;
    for (unsigned count = get16(peer->subscribe + 4); count > 0; count--) {
        unsigned kind = entry[0], n = get16(entry + 2);
        char pattern[MAX_FRAME];
        memcpy(pattern, entry + 4, n);
        pattern[n] = '\0';
        if (kind == 3 || (kind == 1 && strcmp(pattern, topic) == 0) ||
            (kind == 2 && fnmatch(pattern, topic, FNM_NOESCAPE) == 0))
            return 1;
        entry += 4 + n;
    }
    return 0;
}

/* -- joining --------------------------------------------------------------- */

static void greet(const unsigned char *address, size_t length)
{
    if ((length == own_length && memcmp(address, own, length) == 0) ||
        find_peer(address, length) >= 0)
        return;
    int p = add_peer(address, length);
    if (open_link(p) < 0) {
        peers[p].used = 0; /* gone, refused, or a dead member's file: skip it */
        return;
    }
    send_hello(p, 1);
}

static void discover(void)
{
    if (!abstract) {
        DIR *dir = opendir(bus_dir);
        if (!dir)
            die(1, "opendir %s: %s", bus_dir, strerror(errno));
        struct dirent *entry;
        while ((entry = readdir(dir))) {
            char path[MAX_ADDRESS + 1];
            struct stat st;
            if (entry->d_name[0] == '.')
                continue; /* ".", "..", and members still setting up */
            int n = snprintf(path, sizeof path, "%s/%s", bus_dir, entry->d_name);
            if (n < 0 || n > MAX_ADDRESS || lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode))
                continue;
            greet((const unsigned char *)path, (size_t)n);
        }
        closedir(dir);
        return;
    }
    FILE *table = fopen("/proc/net/unix", "r");
    if (!table)
        die(1, "/proc/net/unix: %s", strerror(errno));
    char line[1024], prefix[80];
    snprintf(prefix, sizeof prefix, "@asyncbus/%s/", bus_name);
    const char *wanted_type = seqpacket ? "0005" : "0002";
    if (!fgets(line, sizeof line, table)) { /* the header */
        fclose(table);
        return;
    }
    while (fgets(line, sizeof line, table)) {
        char *field[8], *save = NULL;
        int n = 0;
        for (char *word = strtok_r(line, " \t\n", &save); word && n < 8;
             word = strtok_r(NULL, " \t\n", &save))
            field[n++] = word;
        if (n < 8 || strcmp(field[4], wanted_type) != 0 ||
            strncmp(field[7], prefix, strlen(prefix)) != 0)
            continue;
        if (seqpacket && !(strtoul(field[3], NULL, 16) & 0x10000))
            continue; /* an accepted connection: it shows its listener's name */
        unsigned char address[MAX_ADDRESS];
        size_t length = strlen(field[7]);
        if (length > MAX_ADDRESS)
            continue;
        address[0] = '\0';
        memcpy(address + 1, field[7] + 1, length - 1);
        greet(address, length);
    }
    fclose(table);
}

/* -- receiving ------------------------------------------------------------- */

static int find_source_by_name(const struct sockaddr_un *name, socklen_t length)
{
    int free_slot = -1;
    for (int i = 0; i < MAX_SOURCES; i++) {
        if (!sources[i].used) {
            if (free_slot < 0)
                free_slot = i;
            continue;
        }
        if (sources[i].fd < 0 && sources[i].name_length == length &&
            memcmp(&sources[i].name, name, length) == 0)
            return i;
    }
    if (free_slot < 0)
        die(1, "more than %d sources", MAX_SOURCES);
    memset(&sources[free_slot], 0, sizeof sources[free_slot]);
    sources[free_slot].used = 1;
    sources[free_slot].fd = -1;
    sources[free_slot].peer = -1;
    memcpy(&sources[free_slot].name, name, length);
    sources[free_slot].name_length = length;
    return free_slot;
}

static void deliver(uint32_t seq, const char *channel, const unsigned char *data, size_t size)
{
    printf("msg %u %s %zu ", seq, channel, size);
    for (size_t i = 0; i < size; i++)
        printf("%02x", data[i]);
    printf("\n");
    received++;
    if (until && size == strlen(until) && memcmp(data, until, size) == 0)
        until_seen = 1;
}

/* A channel at data[0..limit): NUL-terminated within 64 bytes and not empty. */
static int channel_at(const unsigned char *data, size_t limit, char *channel)
{
    size_t max = limit < MAX_CHANNEL + 1 ? limit : MAX_CHANNEL + 1;
    const unsigned char *nul = memchr(data, 0, max);
    if (!nul || nul == data)
        return -1;
    memcpy(channel, data, (size_t)(nul - data) + 1);
    return (int)(nul - data) + 1;
}

static void fragment_reset(struct source *src)
{
    free(src->fragment_data);
    src->fragment_data = NULL;
    src->assembling = 0;
}

static void on_fragment(struct source *src, const unsigned char *f, size_t length)
{
    if (length < 20)
        return;
    uint32_t seq = get32(f + 4), size = get32(f + 8), offset = get32(f + 12);
    uint16_t number = get16(f + 16), count = get16(f + 18);
    size_t at = 20;
    if (count == 0 || number >= count || size > MAX_MESSAGE)
        return;
    if (number == 0) {
        /* A link keeps order: fragment 0 starts a message, replacing any unfinished one. */
        int n = channel_at(f + 20, length - 20, src->fragment_channel);
        if (n < 0 || offset != 0)
            return;
        at += (size_t)n;
        fragment_reset(src);
        src->fragment_data = malloc(size ? size : 1);
        if (!src->fragment_data)
            die(1, "out of memory");
        src->assembling = 1;
        src->fragment_seq = seq;
        src->fragment_size = size;
        src->fragment_count = count;
        src->fragment_next = 0;
        src->fragment_got = 0;
    }
    if (!src->assembling || seq != src->fragment_seq || size != src->fragment_size ||
        count != src->fragment_count || number != src->fragment_next ||
        offset != src->fragment_got || offset + (length - at) > size) {
        fprintf(stderr, "unix_peer: fragment %u/%u of seq %u out of place\n", number, count, seq);
        fragment_reset(src);
        return;
    }
    memcpy(src->fragment_data + offset, f + at, length - at);
    src->fragment_got += (uint32_t)(length - at);
    src->fragment_next++;
    if (src->fragment_next == count) {
        if (src->fragment_got == size)
            deliver(seq, src->fragment_channel, src->fragment_data, size);
        fragment_reset(src);
    }
}

static void on_hello(int s, const unsigned char *f, size_t length)
{
    if (length < 8 || f[4] != 1)
        return;
    size_t n = get16(f + 6);
    if (n == 0 || n > MAX_ADDRESS || length < 8 + n)
        return;
    const unsigned char *address = f + 8;
    int reply = f[5] & HELLO_REPLY;
    if (n == own_length && memcmp(address, own, n) == 0)
        return;
    int p = find_peer(address, n);
    int linked = 0;
    if (p < 0)
        p = add_peer(address, n);
    sources[s].peer = p;
    if (peers[p].link < 0) {
        if (open_link(p) < 0) {
            forget_peer(p, "lost");
            return;
        }
        linked = 1;
    }
    int newly = !peers[p].verified;
    peers[p].verified = 1;
    if (newly)
        printf("verified %s\n", show(address, n));
    if ((reply || linked) && send_hello(p, 0) < 0)
        return;
    if (newly || reply)
        send_subscribe(p);
}

static void on_subscribe(int s, const unsigned char *f, size_t length)
{
    int p = sources[s].peer;
    if (p < 0 || length < 6)
        return; /* SUBSCRIBE before HELLO */
    size_t at = 6;
    unsigned count = get16(f + 4);
    for (unsigned i = 0; i < count; i++) {
        if (at + 4 > length)
            return;
        unsigned kind = f[at], entry_policy = f[at + 1], n = get16(f + at + 2);
        if (at + 4 + n > length || kind < 1 || kind > 3 || entry_policy > 2 ||
            (kind == 3) != (n == 0))
            return;
        at += 4 + n;
    }
    if (at != length)
        return;
    unsigned char *copy = malloc(length);
    if (!copy)
        die(1, "out of memory");
    memcpy(copy, f, length);
    free(peers[p].subscribe);
    peers[p].subscribe = copy;
    printf("subscribed %s %u\n", show(peers[p].address, peers[p].address_length), count);
}

static void on_frame(int s, const unsigned char *f, size_t length, uid_t uid)
{
    if (!allowed(uid)) {
        fprintf(stderr, "unix_peer: frame from uid %u refused\n", (unsigned)uid);
        return;
    }
    if (length < 4)
        return;
    uint32_t magic = get32(f);
    if (magic == MAGIC_LC02) {
        char channel[MAX_CHANNEL + 1];
        int n = length >= 10 ? channel_at(f + 8, length - 8, channel) : -1;
        if (n > 0)
            deliver(get32(f + 4), channel, f + 8 + n, length - 8 - (size_t)n);
    } else if (magic == MAGIC_LC03) {
        on_fragment(&sources[s], f, length);
    } else if (magic == MAGIC_HELLO) {
        on_hello(s, f, length);
    } else if (magic == MAGIC_SUBSCRIBE) {
        on_subscribe(s, f, length);
    } else if (magic == MAGIC_BYE && length == 4) {
        if (sources[s].peer >= 0)
            forget_peer(sources[s].peer, "left");
    }
}

static void close_source(int s)
{
    if (sources[s].peer >= 0)
        forget_peer(sources[s].peer, "lost");
    close(sources[s].fd);
    fragment_reset(&sources[s]);
    sources[s].used = 0;
}

/* unix: read every datagram waiting on the receiving socket. */
static void read_datagrams(void)
{
    for (;;) {
        struct sockaddr_un name;
        union {
            struct cmsghdr align;
            char space[CMSG_SPACE(sizeof(struct ucred))];
        } control;
        struct iovec iov = {.iov_base = frame, .iov_len = sizeof frame};
        struct msghdr msg = {
            .msg_name = &name, .msg_namelen = sizeof name,
            .msg_iov = &iov, .msg_iovlen = 1,
            .msg_control = control.space, .msg_controllen = sizeof control.space,
        };
        ssize_t n = recvmsg(receiver, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            die(1, "recvmsg: %s", strerror(errno));
        }
        if (msg.msg_flags & MSG_TRUNC)
            continue;
        uid_t uid = (uid_t)-1;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
                struct ucred cred;
                memcpy(&cred, CMSG_DATA(c), sizeof cred);
                uid = cred.uid;
            }
        }
        on_frame(find_source_by_name(&name, msg.msg_namelen), frame, (size_t)n, uid);
    }
}

/* seqpacket: accept every waiting connection, checking who connected. */
static void accept_connections(void)
{
    for (;;) {
        int fd = accept4(receiver, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            die(1, "accept: %s", strerror(errno));
        }
        struct ucred cred;
        socklen_t size = sizeof cred;
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &size) < 0 || !allowed(cred.uid)) {
            close(fd);
            continue;
        }
        int s = -1;
        for (int i = 0; i < MAX_SOURCES && s < 0; i++)
            if (!sources[i].used)
                s = i;
        if (s < 0)
            die(1, "more than %d sources", MAX_SOURCES);
        memset(&sources[s], 0, sizeof sources[s]);
        sources[s].used = 1;
        sources[s].fd = fd;
        sources[s].uid = cred.uid;
        sources[s].peer = -1;
    }
}

static void read_connection(int s)
{
    for (;;) {
        ssize_t n = recv(sources[s].fd, frame, sizeof frame, MSG_DONTWAIT | MSG_TRUNC);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            close_source(s); /* ECONNRESET and friends: the peer is gone */
            return;
        }
        if (n == 0) {
            close_source(s); /* end of file: the peer left or died (or a probe) */
            return;
        }
        if ((size_t)n > sizeof frame)
            continue; /* longer than any frame */
        on_frame(s, frame, (size_t)n, sources[s].uid);
        if (!sources[s].used)
            return;
    }
}

/* Wait for and handle what arrives, at most until the deadline. */
static void serve(void)
{
    struct pollfd pfds[1 + MAX_SOURCES + MAX_PEERS];
    int owner[1 + MAX_SOURCES + MAX_PEERS]; /* 0: receiver, 1+s: source s, -1-p: link of p */
    int n = 0;
    pfds[n] = (struct pollfd){.fd = receiver, .events = POLLIN};
    owner[n++] = 0;
    if (seqpacket) {
        for (int s = 0; s < MAX_SOURCES; s++)
            if (sources[s].used) {
                pfds[n] = (struct pollfd){.fd = sources[s].fd, .events = POLLIN};
                owner[n++] = 1 + s;
            }
        /* Peers never write on our links: readable means end of file. */
        for (int p = 0; p < MAX_PEERS; p++)
            if (peers[p].used && peers[p].link >= 0) {
                pfds[n] = (struct pollfd){.fd = peers[p].link, .events = POLLIN};
                owner[n++] = -1 - p;
            }
    }
    double left = deadline - now();
    if (left <= 0)
        die(3, "deadline passed (received %ld)", received);
    int ready = poll(pfds, (nfds_t)n, (int)(left * 1000) + 1);
    if (ready < 0) {
        if (errno == EINTR)
            return;
        die(1, "poll: %s", strerror(errno));
    }
    for (int i = 0; i < n && ready > 0; i++) {
        if (!pfds[i].revents)
            continue;
        if (owner[i] == 0) {
            if (seqpacket)
                accept_connections();
            else
                read_datagrams();
        } else if (owner[i] > 0) {
            int s = owner[i] - 1;
            if (sources[s].used && sources[s].fd == pfds[i].fd)
                read_connection(s);
        } else {
            int p = -1 - owner[i];
            char byte;
            if (!peers[p].used || peers[p].link != pfds[i].fd)
                continue;
            ssize_t got = recv(peers[p].link, &byte, 1, MSG_DONTWAIT);
            if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR))
                forget_peer(p, "lost");
        }
    }
}

/* -- publishing ------------------------------------------------------------ */

static unsigned char *payload_of(long index, size_t size)
{
    unsigned char *data = malloc(size ? size : 1);
    if (!data)
        die(1, "out of memory");
    for (size_t k = 0; k < size; k++)
        data[k] = (unsigned char)((7 * index + (long)k) & 0xff);
    return data;
}

/* One message to one peer: LC02, or LC03 fragments cut as docs "How a message is cut". */
static void publish_to(int p, const char *topic, const unsigned char *data, size_t size)
{
    static unsigned char out[MAX_FRAME];
    size_t c = strlen(topic) + 1;
    uint32_t seq = peers[p].seq++;
    if (c + size <= MAX_SHORT_PAYLOAD) {
        put32(out, MAGIC_LC02);
        put32(out + 4, seq);
        memcpy(out + 8, topic, c);
        memcpy(out + 8 + c, data, size);
        send_frame(p, out, 8 + c + size);
        return;
    }
    size_t count = (c + size + FRAGMENT_PAYLOAD - 1) / FRAGMENT_PAYLOAD;
    size_t offset = 0;
    for (size_t i = 0; i < count; i++) {
        size_t at = 20, room = FRAGMENT_PAYLOAD;
        put32(out, MAGIC_LC03);
        put32(out + 4, seq);
        put32(out + 8, (uint32_t)size);
        put32(out + 12, (uint32_t)offset);
        put16(out + 16, (uint16_t)i);
        put16(out + 18, (uint16_t)count);
        if (i == 0) {
            memcpy(out + at, topic, c);
            at += c;
            room -= c;
        }
        size_t part = size - offset < room ? size - offset : room;
        memcpy(out + at, data + offset, part);
        offset += part;
        if (send_frame(p, out, at + part) < 0)
            return;
    }
}

static int subscribers(const char *topic)
{
    int count = 0;
    for (int p = 0; p < MAX_PEERS; p++)
        if (peers[p].used && peers[p].verified && wants(&peers[p], topic))
            count++;
    return count;
}

/* -- main ------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr, "usage: unix_peer URL [--name MEMBER] [--subscribe PATTERN]... "
                    "[--policy drop_oldest|drop_newest|block] [--receive N] [--until TEXT] "
                    "[--hold] [--publish TOPIC] [--count M] [--size BYTES[,BYTES]...] "
                    "[--subscribers K] [--deadline SECONDS]\n");
    exit(2);
}

static void parse_url(const char *url)
{
    const char *rest;
    if (strncmp(url, "unix:", 5) == 0) {
        rest = url + 5;
    } else if (strncmp(url, "seqpacket:", 10) == 0) {
        seqpacket = 1;
        rest = url + 10;
    } else {
        usage();
    }
    if (rest[0] == '@' && strlen(rest + 1) >= 1 && strlen(rest + 1) < sizeof bus_name) {
        abstract = 1;
        strcpy(bus_name, rest + 1);
    } else if (strncmp(rest, "///", 3) == 0 && strlen(rest + 2) < sizeof bus_dir) {
        strcpy(bus_dir, rest + 2); /* a normal absolute path, no trailing slash */
    } else {
        usage();
    }
}

int main(int argc, char **argv)
{
    const char *name = NULL, *topic = NULL;
    long to_receive = 0, count = 0, wanted = 1;
    long sizes[16] = {8};
    int size_count = 1;
    int hold = 0;
    double seconds = 20;
    char default_name[32];

    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2)
        usage();
    parse_url(argv[1]);
    for (int i = 2; i < argc; i++) {
        const char *arg = argv[i];
        const char *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "--hold") == 0) {
            hold = 1;
            continue;
        }
        if (!value)
            usage();
        i++;
        if (strcmp(arg, "--name") == 0)
            name = value;
        else if (strcmp(arg, "--subscribe") == 0 && pattern_count < MAX_PATTERNS)
            patterns[pattern_count++] = value;
        else if (strcmp(arg, "--policy") == 0)
            policy = strcmp(value, "block") == 0 ? 2 : strcmp(value, "drop_newest") == 0 ? 1 : 0;
        else if (strcmp(arg, "--receive") == 0)
            to_receive = atol(value);
        else if (strcmp(arg, "--until") == 0)
            until = value;
        else if (strcmp(arg, "--publish") == 0)
            topic = value;
        else if (strcmp(arg, "--count") == 0)
            count = atol(value);
        else if (strcmp(arg, "--size") == 0) {
            char *end = (char *)value;
            for (size_count = 0; size_count < 16 && *end; size_count++) {
                sizes[size_count] = strtol(end, &end, 10);
                if (sizes[size_count] < 0 || (*end && *end++ != ','))
                    usage();
            }
            if (size_count == 0)
                usage();
        }
        else if (strcmp(arg, "--subscribers") == 0)
            wanted = atol(value);
        else if (strcmp(arg, "--deadline") == 0)
            seconds = atof(value);
        else
            usage();
    }
    if ((count > 0 && !topic) || (until && to_receive))
        usage();
    if (!name) {
        snprintf(default_name, sizeof default_name, "c-%ld", (long)getpid());
        name = default_name;
    }
    deadline = now() + seconds;

    /* The member address ("Bus addresses"). For a path, own also gets a NUL after it. */
    int n = abstract ? snprintf((char *)own + 1, sizeof own - 1, "asyncbus/%s/%s", bus_name, name)
                     : snprintf((char *)own, sizeof own, "%s/%s", bus_dir, name);
    if (n < 0 || (size_t)n + abstract >= sizeof own)
        die(2, "member address too long");
    own[0] = abstract ? '\0' : own[0];
    own_length = (size_t)n + (size_t)abstract;

    /* The receiving socket ("Sockets"). */
    receiver = socket(AF_UNIX, (seqpacket ? SOCK_SEQPACKET : SOCK_DGRAM) | SOCK_NONBLOCK |
                                    SOCK_CLOEXEC, 0);
    if (receiver < 0)
        die(1, "socket: %s", strerror(errno));
    if (!seqpacket) {
        int on = 1;
        if (setsockopt(receiver, SOL_SOCKET, SO_PASSCRED, &on, sizeof on) < 0)
            die(1, "SO_PASSCRED: %s", strerror(errno));
    }
    /* A directory member sets up under a hidden name (".FILE") nobody lists. */
    struct sockaddr_un sa;
    socklen_t length;
    if (abstract) {
        length = sockaddr_of(&sa, own, own_length);
    } else {
        n = snprintf(hidden, sizeof hidden, "%s/.%s", bus_dir, name);
        if (n < 0 || (size_t)n > MAX_ADDRESS)
            die(2, "member address too long");
        length = sockaddr_of(&sa, (const unsigned char *)hidden, (size_t)n);
    }
    if (bind(receiver, (struct sockaddr *)&sa, length) < 0) {
        size_t keep = own_length;
        own_length = 0; /* not ours to unlink */
        hidden[0] = '\0';
        die(1, "bind %s: %s", show(own, keep), strerror(errno));
    }
    if (!abstract && chmod(hidden, 0600) < 0)
        die(1, "chmod %s: %s", hidden, strerror(errno));
    if (seqpacket && listen(receiver, 128) < 0)
        die(1, "listen: %s", strerror(errno));
    if (!abstract) {
        if (rename(hidden, (const char *)own) < 0)
            die(1, "rename %s: %s", hidden, strerror(errno));
        hidden[0] = '\0';
    }

    /* Join: HELLO with REPLY to every member found. */
    discover();
    printf("ready %s\n", show(own, own_length));

    int held = !hold;
    while (!held || (until ? !until_seen : received < to_receive)) {
        serve();
        if (!held) {
            int verified = 0;
            for (int p = 0; p < MAX_PEERS; p++)
                verified += peers[p].used && peers[p].verified;
            if (verified) {
                char line[64];
                printf("held\n");
                if (!fgets(line, sizeof line, stdin))
                    die(1, "stdin closed while held");
                held = 1;
            }
        }
    }

    if (count > 0) {
        while (subscribers(topic) < wanted)
            serve();
        for (long i = 0; i < count; i++) {
            size_t size = (size_t)sizes[i % size_count];
            unsigned char *data = payload_of(i, size);
            for (int p = 0; p < MAX_PEERS; p++)
                if (peers[p].used && peers[p].verified && wants(&peers[p], topic))
                    publish_to(p, topic, data, size);
            free(data);
        }
        printf("published %ld\n", count);
    }

    /* Leave: BYE on every link, close, remove the socket file. */
    static const unsigned char bye[4] = {0x41, 0x42, 0x42, 0x59};
    for (int p = 0; p < MAX_PEERS; p++)
        if (peers[p].used && peers[p].link >= 0)
            send_frame(p, bye, sizeof bye);
    cleanup();
    printf("done\n");
    return 0;
}
