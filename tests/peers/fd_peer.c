/*
 * A process that passes file descriptors with asyncbus without being asyncbus:
 * plain C, POSIX and Linux calls only (sendmsg/recvmsg with SCM_RIGHTS). The
 * test tests/test_sockio.py runs it against asyncbus.send_fds/recv_fds over an
 * AF_UNIX socket it inherits (stream, datagram or seqpacket alike).
 *
 *   fd_peer SOCKFD send DIR
 *       Creates the file DIR/from-c.txt holding "file written by C\n" and a pipe,
 *       sends one message "from C" with two fds attached: the pipe's read end and
 *       the file (read-write). Then writes "pipe written by C\n" into the pipe,
 *       closes everything and prints "sent 2".
 *
 *   fd_peer SOCKFD receive MAXFDS
 *       Receives one message with room for MAXFDS fds (MSG_CMSG_CLOEXEC) and
 *       prints "data LENGTH HEX", then "fds COUNT" and "truncated 0|1", then one
 *       line per fd, in order:
 *         "fd I ino INODE dev DEVICE wrote"         opened for writing and not a
 *             regular file (a pipe's write end, a socket): it wrote "C wrote to fd I\n"
 *         "fd I ino INODE dev DEVICE content HEX"   a readable regular file (memfds
 *             too): its first 4096 bytes, read with pread from offset 0
 *         "fd I ino INODE dev DEVICE skipped"       anything else
 *
 * Diagnostics go to stderr. Exit status: 0 done, 1 system error, 2 usage,
 * 3 nothing arrived within 10 seconds.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define MAX_FDS 253     /* Linux SCM_MAX_FD (include/net/scm.h) */
#define MAX_DATA 65536  /* more than any test sends */
#define DEADLINE_MS 10000

static int fail(const char *what) {
    fprintf(stderr, "fd_peer: %s: %s\n", what, strerror(errno));
    return 1;
}

static void print_hex(const unsigned char *bytes, size_t length) {
    for (size_t i = 0; i < length; i++) {
        printf("%02x", bytes[i]);
    }
}

static int write_all(int fd, const char *text) {
    size_t length = strlen(text);
    while (length > 0) {
        ssize_t written = write(fd, text, length);
        if (written < 0) {
            if (errno == EINTR) {
                continue;
            }
            return -1;
        }
        text += written;
        length -= (size_t)written;
    }
    return 0;
}

static int send_mode(int sock, const char *dir) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s/from-c.txt", dir) >= (int)sizeof path) {
        fprintf(stderr, "fd_peer: directory name too long\n");
        return 2;
    }

    int file = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (file < 0) {
        return fail("open");
    }
    if (write_all(file, "file written by C\n") < 0) {
        return fail("write file");
    }

    int pipe_ends[2];
    if (pipe(pipe_ends) < 0) {
        return fail("pipe");
    }

    int fds[2] = {pipe_ends[0], file};
    char data[] = "from C";
    struct iovec iov = {.iov_base = data, .iov_len = strlen(data)};
    union {  /* aligned as a cmsghdr must be */
        char buffer[CMSG_SPACE(sizeof fds)];
        struct cmsghdr align;
    } control;
    memset(&control, 0, sizeof control);
    struct msghdr msg = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buffer,
        .msg_controllen = sizeof control.buffer,
    };
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof fds);
    memcpy(CMSG_DATA(cmsg), fds, sizeof fds);
    ssize_t sent;
    do {
        sent = sendmsg(sock, &msg, 0);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0) {
        return fail("sendmsg");
    }

    /* The receiver's copy of the read end sees this, then end of file once we exit. */
    if (write_all(pipe_ends[1], "pipe written by C\n") < 0) {
        return fail("write pipe");
    }
    close(pipe_ends[0]);
    close(pipe_ends[1]);
    close(file);
    printf("sent 2\n");
    return 0;
}

static void use_fd(size_t index, int fd) {
    struct stat st;
    if (fstat(fd, &st) < 0) {
        printf("fd %zu fstat-failed %d\n", index, errno);
        return;
    }
    printf("fd %zu ino %llu dev %llu", index, (unsigned long long)st.st_ino,
           (unsigned long long)st.st_dev);

    int mode = fcntl(fd, F_GETFL) & O_ACCMODE;
    if (S_ISREG(st.st_mode) && (mode == O_RDONLY || mode == O_RDWR)) {
        static unsigned char content[4096];
        ssize_t got = pread(fd, content, sizeof content, 0);
        if (got < 0) {
            printf(" pread-failed %d\n", errno);
            return;
        }
        printf(" content ");
        print_hex(content, (size_t)got);
        printf("\n");
    } else if (!S_ISREG(st.st_mode) && (mode == O_WRONLY || mode == O_RDWR)) {
        char line[64];
        snprintf(line, sizeof line, "C wrote to fd %zu\n", index);
        printf(write_all(fd, line) < 0 ? " write-failed\n" : " wrote\n");
    } else {
        printf(" skipped\n");
    }
}

static int receive_mode(int sock, long maxfds) {
    struct pollfd ready = {.fd = sock, .events = POLLIN};
    int polled;
    do {
        polled = poll(&ready, 1, DEADLINE_MS);
    } while (polled < 0 && errno == EINTR);
    if (polled < 0) {
        return fail("poll");
    }
    if (polled == 0) {
        fprintf(stderr, "fd_peer: nothing arrived within %d ms\n", DEADLINE_MS);
        return 3;
    }

    static unsigned char data[MAX_DATA];
    union {
        char buffer[CMSG_SPACE(MAX_FDS * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = data, .iov_len = sizeof data};
    struct msghdr msg = {
        .msg_iov = &iov,
        .msg_iovlen = 1,
        .msg_control = control.buffer,
        .msg_controllen = maxfds > 0 ? CMSG_LEN((size_t)maxfds * sizeof(int)) : 0,
    };
    ssize_t got;
    do {
        got = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
        return fail("recvmsg");
    }

    int fds[MAX_FDS];
    size_t count = 0;
    for (struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg); cmsg != NULL; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
        if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) {
            continue;
        }
        size_t n = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < n && count < MAX_FDS; i++) {
            memcpy(&fds[count++], CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
        }
    }

    printf("data %zd ", got);
    print_hex(data, (size_t)got);
    printf("\nfds %zu\ntruncated %d\n", count, (msg.msg_flags & MSG_CTRUNC) ? 1 : 0);
    for (size_t i = 0; i < count; i++) {
        use_fd(i, fds[i]);
        close(fds[i]);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: fd_peer SOCKFD send DIR | fd_peer SOCKFD receive MAXFDS\n");
        return 2;
    }

    char *end;
    long sock = strtol(argv[1], &end, 10);
    if (*end != '\0' || sock < 0) {
        fprintf(stderr, "fd_peer: bad SOCKFD %s\n", argv[1]);
        return 2;
    }

    if (strcmp(argv[2], "send") == 0) {
        return send_mode((int)sock, argv[3]);
    }

    if (strcmp(argv[2], "receive") == 0) {
        long maxfds = strtol(argv[3], &end, 10);
        if (*end != '\0' || maxfds < 0 || maxfds > MAX_FDS) {
            fprintf(stderr, "fd_peer: MAXFDS must be 0..%d\n", MAX_FDS);
            return 2;
        }
        return receive_mode((int)sock, maxfds);
    }

    fprintf(stderr, "fd_peer: unknown mode %s\n", argv[2]);
    return 2;
}
