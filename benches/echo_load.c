/* The load of the echo benchmark: N TCP connections to an echo server on 127.0.0.1,
 * each keeping one message of SIZE bytes in flight (send it, wait for all of it back,
 * send again), driven by one epoll thread. After a warm-up it counts round trips for
 * SECONDS and reads the server's resident memory (VmRSS of its pid) before the first
 * connection and with all connections open.
 *
 *   echo_load PORT SERVER_PID CONNECTIONS SECONDS [SIZE=64]
 *
 * Prints one line: connections, round trips per second, resident kB before and during,
 * and bytes of resident memory per connection. A benchmark, not a test: nothing passes
 * or fails on a time. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    size_t sent;
    size_t got;
} conn_t;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long rss_kb(int pid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    long kb = -1;
    if (!f) {
        return -1;
    }
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
        }
    }
    fclose(f);
    return kb;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: echo_load PORT SERVER_PID CONNECTIONS SECONDS [SIZE]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    int server = atoi(argv[2]);
    int n = atoi(argv[3]);
    double seconds = atof(argv[4]);
    size_t size = argc > 5 ? (size_t)atol(argv[5]) : 64;
    char *message = malloc(size);
    char *buffer = malloc(size);
    conn_t *conns = calloc((size_t)n, sizeof *conns);
    if (!message || !buffer || !conns || n <= 0 || size == 0) {
        return 2;
    }
    memset(message, 'e', size);

    long idle_kb = rss_kb(server);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ep = epoll_create1(0);
    if (ep < 0) {
        die("epoll_create1");
    }
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) {
            die("socket");
        }
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
            die("connect");
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conns[i].fd = fd;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &conns[i]};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0) {
            die("epoll_ctl");
        }
        if (send(fd, message, size, MSG_NOSIGNAL) != (ssize_t)size) {
            die("send");
        }
    }

    struct epoll_event events[256];
    double warm_until = now() + 0.5;
    double start = 0, end = 0;
    long count = 0, busy_kb = -1;
    int measuring = 0;
    for (;;) {
        double t = now();
        if (!measuring && t >= warm_until) {
            busy_kb = rss_kb(server);
            measuring = 1;
            start = t;
            end = t + seconds;
            count = 0;
        }
        if (measuring && t >= end) {
            break;
        }
        int k = epoll_wait(ep, events, 256, 100);
        if (k < 0) {
            if (errno == EINTR) {
                continue;
            }
            die("epoll_wait");
        }
        for (int e = 0; e < k; e++) {
            conn_t *c = events[e].data.ptr;
            ssize_t r = recv(c->fd, buffer, size - c->got, 0);
            if (r <= 0) {
                if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
                    continue;
                }
                fprintf(stderr, "echo_load: the server closed a connection\n");
                return 1;
            }
            c->got += (size_t)r;
            if (c->got == size) {
                c->got = 0;
                count++;
                if (send(c->fd, message, size, MSG_NOSIGNAL) != (ssize_t)size) {
                    die("send");
                }
            }
        }
    }
    double elapsed = now() - start;
    long per_conn = (busy_kb >= 0 && idle_kb >= 0) ? (busy_kb - idle_kb) * 1024 / n : -1;
    printf("connections=%d round_trips_per_s=%.0f rss_idle_kb=%ld rss_kb=%ld bytes_per_connection=%ld\n",
           n, (double)count / elapsed, idle_kb, busy_kb, per_conn);
    for (int i = 0; i < n; i++) {
        close(conns[i].fd);
    }
    close(ep);
    free(conns);
    free(message);
    free(buffer);
    return 0;
}
