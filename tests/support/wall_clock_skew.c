/* Preloaded into one test process (LD_PRELOAD) to move its wall clock by
 * WALL_CLOCK_SKEW_SECS seconds, as on a host whose clock has drifted: clock_gettime,
 * gettimeofday and time read the moved clock (the monotonic clock stays true), and the
 * deadlines of timed waits on condition variables, which the kernel compares with its own
 * wall clock, are moved back, so a wait lasts what the program asked for.
 *
 * Debian's libfaketime 0.9.10 does the same in principle, but its rewriting of
 * pthread_cond_timedwait deadlines stretches librdkafka's timed waits by the whole offset,
 * so a Kafka client under it stalls for minutes at start and at shutdown. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdlib.h>
#include <threads.h>
#include <sys/time.h>
#include <time.h>

static long skew(void) {
    const char *text = getenv("WALL_CLOCK_SKEW_SECS");
    return text ? atol(text) : 0;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    static int (*real)(clockid_t, struct timespec *);
    if (!real) real = (int (*)(clockid_t, struct timespec *))dlsym(RTLD_NEXT, "clock_gettime");
    int result = real(clock, ts);
    if (result == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE))
        ts->tv_sec += skew();
    return result;
}

int gettimeofday(struct timeval *tv, void *tz) {
    struct timespec ts;
    int result = clock_gettime(CLOCK_REALTIME, &ts);
    (void)tz;
    if (result == 0) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return result;
}

time_t time(time_t *out) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (out) *out = ts.tv_sec;
    return ts.tv_sec;
}

/* A deadline on the moved clock, as a deadline on the kernel's. */
static struct timespec unmoved(const struct timespec *deadline) {
    struct timespec real = *deadline;
    real.tv_sec -= skew();
    return real;
}

int pthread_cond_timedwait(pthread_cond_t *cond, pthread_mutex_t *mutex,
                           const struct timespec *deadline) {
    static int (*real)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *);
    if (!real)
        real = (int (*)(pthread_cond_t *, pthread_mutex_t *, const struct timespec *))dlsym(
            RTLD_NEXT, "pthread_cond_timedwait");
    struct timespec moved = unmoved(deadline);
    return real(cond, mutex, &moved);
}

int cnd_timedwait(cnd_t *cond, mtx_t *mutex, const struct timespec *deadline) {
    static int (*real)(cnd_t *, mtx_t *, const struct timespec *);
    if (!real)
        real = (int (*)(cnd_t *, mtx_t *, const struct timespec *))dlsym(RTLD_NEXT, "cnd_timedwait");
    struct timespec moved = unmoved(deadline);
    return real(cond, mutex, &moved);
}
