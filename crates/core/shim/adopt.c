/*
 * herd's port adoption, loaded (LD_PRELOAD) into apps run by Bun or Deno.
 *
 * Neither runtime can listen on a socket it inherits (Bun.serve, Deno.serve and their
 * node:http layers all bind their own), so the sockets herd passes as LISTEN_FDS would go
 * unused. This library wraps bind(2): when the process binds a TCP socket to the port of one
 * of its LISTEN_FDS sockets, that socket is put in its place (dup2 onto the same fd number, the
 * caller's O_NONBLOCK and FD_CLOEXEC kept) and bind returns 0; the listen(2) that follows is
 * harmless on a socket that already listens. The host asked for is ignored: herd's bind address
 * wins, as for Node apps. A second bind to an adopted port fails with EADDRINUSE (the app would
 * otherwise join herd's reuseport group behind its back).
 *
 * It does nothing in a process whose pid is not LISTEN_PID (children inherit LD_PRELOAD and
 * the variables, not the sockets), for other ports, port 0, UDP and Unix sockets.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FDS 64

/* Adopted LISTEN_FDS sockets (bit k: fd 3 + k). */
static unsigned long long adopted;

static int port_of(const struct sockaddr *a, socklen_t len) {
    if (a->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in))
        return ntohs(((const struct sockaddr_in *)a)->sin_port);
    if (a->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6))
        return ntohs(((const struct sockaddr_in6 *)a)->sin6_port);
    return -1;
}

static int is_listening_stream(int fd) {
    int v = 0;
    socklen_t l = sizeof v;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &v, &l) != 0 || v != SOCK_STREAM)
        return 0;
    l = sizeof v;
    return getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &v, &l) == 0 && v;
}

/* The LISTEN_FDS socket on `port`, or -1. */
static int herd_socket_for(int port) {
    const char *pid = getenv("LISTEN_PID"), *n = getenv("LISTEN_FDS");
    if (!pid || !n || atol(pid) != (long)getpid())
        return -1;
    int count = atoi(n);
    for (int k = 0; k < count && k < MAX_FDS; k++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        if (getsockname(3 + k, (struct sockaddr *)&ss, &sl) == 0 &&
            port_of((struct sockaddr *)&ss, sl) == port && is_listening_stream(3 + k))
            return 3 + k;
    }
    return -1;
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real_bind)(int, const struct sockaddr *, socklen_t);
    if (!real_bind)
        real_bind = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "bind");
    if (!real_bind) {
        errno = ENOSYS;
        return -1;
    }
    int port = addr ? port_of(addr, len) : -1;
    int type = 0;
    socklen_t tl = sizeof type;
    if (port <= 0 || getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM)
        return real_bind(fd, addr, len);
    int ours = herd_socket_for(port);
    if (ours < 0 || ours == fd)
        return real_bind(fd, addr, len);
    unsigned long long bit = 1ULL << (ours - 3);
    if (__atomic_fetch_or(&adopted, bit, __ATOMIC_SEQ_CST) & bit) {
        errno = EADDRINUSE;
        return -1;
    }
    int status = fcntl(fd, F_GETFL), flags = fcntl(fd, F_GETFD);
    if (dup2(ours, fd) < 0) {
        __atomic_fetch_and(&adopted, ~bit, __ATOMIC_SEQ_CST);
        return -1;
    }
    if (status >= 0) {
        int now = fcntl(fd, F_GETFL);
        if (now >= 0)
            fcntl(fd, F_SETFL, (now & ~O_NONBLOCK) | (status & O_NONBLOCK));
    }
    if (flags >= 0)
        fcntl(fd, F_SETFD, flags);
    return 0;
}
