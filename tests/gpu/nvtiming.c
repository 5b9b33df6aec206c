/* nvtiming: what the ways of learning the host's CUDA driver version cost, on this host.
 *   (1) dlopen("libcuda.so.1") + cuDriverGetVersion (no cuInit)
 *   (2) dlopen("libnvidia-ml.so.1") + nvmlInit_v2 + nvmlSystemGetCudaDriverVersion + nvmlShutdown
 * Each in a fresh process (fork), as a hook would pay it; median of N runs. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int via_cuda(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) return -1;
    int (*f)(int *) = (int (*)(int *))dlsym(h, "cuDriverGetVersion");
    int v = 0;
    return f && f(&v) == 0 ? v : -2;
}

static int via_nvml(void) {
    void *h = dlopen("libnvidia-ml.so.1", RTLD_NOW);
    if (!h) return -1;
    int (*init)(void) = (int (*)(void))dlsym(h, "nvmlInit_v2");
    int (*get)(int *) = (int (*)(int *))dlsym(h, "nvmlSystemGetCudaDriverVersion");
    int (*fini)(void) = (int (*)(void))dlsym(h, "nvmlShutdown");
    int v = 0;
    if (!init || !get || init() != 0) return -2;
    get(&v);
    if (fini) fini();
    return v;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void measure(const char *name, int (*fn)(void), int n) {
    double t[64];
    int v = 0;
    for (int i = 0; i < n; i++) {
        int p[2];
        if (pipe(p)) return;
        double t0 = now_ms();
        pid_t c = fork();
        if (c == 0) { int r = fn(); if (write(p[1], &r, sizeof r) < 0) _exit(2); _exit(0); }
        waitpid(c, 0, 0);
        t[i] = now_ms() - t0;
        if (read(p[0], &v, sizeof v) < 0) v = -3;
        close(p[0]); close(p[1]);
    }
    qsort(t, n, sizeof t[0], cmp);
    printf("%-44s version=%d median=%.2f ms min=%.2f ms max=%.2f ms (n=%d)\n", name, v, t[n / 2], t[0], t[n - 1], n);
}

int main(void) {
    measure("dlopen libcuda + cuDriverGetVersion", via_cuda, 21);
    measure("NVML init + SystemGetCudaDriverVersion", via_nvml, 11);
    return 0;
}
