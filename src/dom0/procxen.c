/*
 * libxensharp-procxen.so: Linux's /proc/xen files for Xen's programs run under ./dom0, where no xenfs is
 * mounted. A Xen dom0 kernel offers its own xenstore ring (page and event channel) in /proc/xen/xsd_port and
 * /proc/xen/xsd_kva, which xenstored serves as Domain-0's connection; XenSharp's Domain-0 is the daemon, whose
 * xenstore is its own, so a C xenstored run beside it is given a port and a page chosen by whoever starts it:
 * opening those two paths opens the files named by $XENSHARP_XSD_PORT and $XENSHARP_XSD_KVA instead.
 * /proc/xen/capabilities ("control_d" in a control domain, which is how libvirt's libxl driver decides it runs
 * in dom0) is the file named by $XENSHARP_XEN_CAPABILITIES, for open and access alike. Loaded with LD_PRELOAD;
 * every other path is opened as usual.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static const char *redirect(const char *path)
{
    const char *to = NULL;

    if (path && !strcmp(path, "/proc/xen/xsd_port"))
        to = getenv("XENSHARP_XSD_PORT");
    else if (path && !strcmp(path, "/proc/xen/xsd_kva"))
        to = getenv("XENSHARP_XSD_KVA");
    else if (path && !strcmp(path, "/proc/xen/capabilities"))
        to = getenv("XENSHARP_XEN_CAPABILITIES");
    return to && *to ? to : path;
}

typedef int (*open_fn)(const char *, int, ...);

static int forward(const char *symbol, const char *path, int flags, va_list ap)
{
    open_fn next = (open_fn)dlsym(RTLD_NEXT, symbol);
    mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, mode_t) : 0;

    return next(redirect(path), flags, mode);
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    int fd;

    va_start(ap, flags);
    fd = forward("open", path, flags, ap);
    va_end(ap);
    return fd;
}

int open64(const char *path, int flags, ...)
{
    va_list ap;
    int fd;

    va_start(ap, flags);
    fd = forward("open64", path, flags, ap);
    va_end(ap);
    return fd;
}

typedef int (*access_fn)(const char *, int);

int access(const char *path, int mode)
{
    access_fn next = (access_fn)dlsym(RTLD_NEXT, "access");

    return next(redirect(path), mode);
}
