/* For the systemd test host only (tests/systemd/host.sh builds it into the tree and crun there
 * runs with it preloaded; docs/systemd.md).
 *
 * crun 1.8 raises RLIMIT_MEMLOCK to infinity before it loads its cgroup v2 device program and
 * gives up when that fails ("setrlimit (RLIM_MEMLOCK): Operation not permitted"). Machines
 * whose bounding set lacks CAP_SYS_RESOURCE (the CI containers) cannot raise it, so crun could
 * never start a container on a cgroup v2 host there. Since Linux 5.11 BPF memory is charged to
 * the memory cgroup, not to RLIMIT_MEMLOCK: the raise changes nothing the kernel checks. This
 * turns only that failure (EPERM on RLIMIT_MEMLOCK) into success; every other call, and every
 * raise that is permitted, is the real one. crun re-executes itself (its copy-of-self defence,
 * CVE-2019-5736), so LD_PRELOAD stays set; its hooks and container get the spec's env only. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stddef.h>
#include <sys/resource.h>

typedef int (*setrlimit_fn)(__rlimit_resource_t, const struct rlimit *);

static int shim(const char *name, __rlimit_resource_t resource, const struct rlimit *rlim)
{
    setrlimit_fn real = (setrlimit_fn)dlsym(RTLD_NEXT, name);
    if (real == NULL) {
        errno = ENOSYS;
        return -1;
    }
    int r = real(resource, rlim);
    if (r < 0 && errno == EPERM && resource == RLIMIT_MEMLOCK)
        return 0;
    return r;
}

int setrlimit(__rlimit_resource_t resource, const struct rlimit *rlim)
{
    return shim("setrlimit", resource, rlim);
}

int setrlimit64(__rlimit_resource_t resource, const struct rlimit64 *rlim)
{
    return shim("setrlimit64", resource, (const struct rlimit *)rlim);
}
