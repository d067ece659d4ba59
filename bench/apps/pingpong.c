/*
 * The physical limit of a round trip between two processes on this host: a blocking
 * request/reply of 64-byte messages over a socketpair, nothing else (no framing, no parsing,
 * no event loop). bench/bus.py builds it with `cc -O2` and prints it beside herd and Node.
 *
 *     pingpong SECS WARMUP PLACEMENT
 *
 * PLACEMENT: `any` (the kernel places both), `same` (both pinned to CPU 0), `split` (parent
 * on CPU 0, child on CPU 1). Prints one JSON line: round trips per second, p50 and p99 in
 * microseconds, and the CPUs each side last ran on.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SIZE 64
#define MAX_SAMPLES (1 << 22)

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0)
        perror("sched_setaffinity");
}

static int full(int fd, char *buf, int write_it) {
    int done = 0;
    while (done < SIZE) {
        ssize_t n = write_it ? write(fd, buf + done, SIZE - done) : read(fd, buf + done, SIZE - done);
        if (n <= 0)
            return -1;
        done += n;
    }
    return 0;
}

static int cmp(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: pingpong SECS WARMUP any|same|split\n");
        return 2;
    }
    double secs = atof(argv[1]), warmup = atof(argv[2]);
    const char *place = argv[3];
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        perror("socketpair");
        return 1;
    }
    char buf[SIZE];
    memset(buf, 'x', SIZE);
    pid_t child = fork();
    if (child < 0) {
        perror("fork");
        return 1;
    }
    if (child == 0) {
        close(sv[0]);
        if (!strcmp(place, "same"))
            pin(0);
        else if (!strcmp(place, "split"))
            pin(1);
        while (full(sv[1], buf, 0) == 0 && full(sv[1], buf, 1) == 0) {
        }
        _exit(0);
    }
    close(sv[1]);
    if (!strcmp(place, "same") || !strcmp(place, "split"))
        pin(0);
    float *lat = malloc(sizeof(float) * MAX_SAMPLES);
    if (!lat)
        return 1;
    long n = 0;
    double start = now(), measure = start + warmup, end = measure + secs;
    for (;;) {
        double t = now();
        if (t >= end)
            break;
        if (full(sv[0], buf, 1) != 0 || full(sv[0], buf, 0) != 0) {
            fprintf(stderr, "the child went away\n");
            return 1;
        }
        double d = now() - t;
        if (t >= measure && n < MAX_SAMPLES)
            lat[n++] = (float)(d * 1e6);
    }
    int cpu_parent = sched_getcpu();
    close(sv[0]);
    int status;
    waitpid(child, &status, 0);
    if (n == 0)
        return 1;
    qsort(lat, n, sizeof(float), cmp);
    printf("{\"rate\": %.0f, \"p50_us\": %.2f, \"p99_us\": %.2f, \"placement\": \"%s\", \"parent_cpu\": %d}\n",
           n / secs, lat[n / 2], lat[(long)(n * 0.99)], place, cpu_parent);
    free(lat);
    return 0;
}
