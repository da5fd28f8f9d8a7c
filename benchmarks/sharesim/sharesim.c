/*
 * sharesim: a read-only FUSE passthrough that waits a fixed time on every operation.
 *
 * It stands in for an instrument share (NFS/SMB) in the benchmarks: on a share every
 * lookup, getattr, open, read and readdir is a round trip to the filer, 0.1-0.5 ms on a
 * LAN and several ms from a cloud VM. Requests are served on libfuse's thread pool, so
 * concurrent requests wait concurrently, as they do against a real filer. The kernel
 * keeps attributes and names for one second, as an NFS client's attribute cache does
 * (acregmin is 3 s by default), and file pages not at all: every open, read and first
 * lookup pays the latency, as on a cold NFS client.
 *
 *   sharesim SOURCE MOUNTPOINT -o latency_us=500 [-f]
 *
 * Built by benchmarks/share.py (gcc, pkg-config fuse3); nothing here is needed to run
 * sruns-stream.
 */
#define FUSE_USE_VERSION 31

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

static struct {
    const char *source;
    unsigned latency_us;
} opt;

static const struct fuse_opt option_spec[] = {
    {"latency_us=%u", offsetof(__typeof__(opt), latency_us), 0},
    FUSE_OPT_END,
};

static void wait_latency(void) {
    if (opt.latency_us) {
        struct timespec ts = {opt.latency_us / 1000000, (long)(opt.latency_us % 1000000) * 1000};
        while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
        }
    }
}

static int real(const char *path, char *out) {
    if (snprintf(out, PATH_MAX, "%s%s", opt.source, path) >= PATH_MAX) return -ENAMETOOLONG;
    return 0;
}

static void *sim_init(struct fuse_conn_info *conn, struct fuse_config *cfg) {
    (void)conn;
    cfg->use_ino = 1;  /* the source's inode numbers: sruns-stream compares them */
    cfg->attr_timeout = 1.0;
    cfg->entry_timeout = 1.0;
    cfg->negative_timeout = 0;
    cfg->kernel_cache = 0;
    return NULL;
}

static int sim_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
    char p[PATH_MAX];
    int r = real(path, p);
    wait_latency();
    if (r) return r;
    if (fi && fi->fh) return fstat((int)fi->fh, st) == -1 ? -errno : 0;
    return lstat(p, st) == -1 ? -errno : 0;
}

static int sim_access(const char *path, int mask) {
    char p[PATH_MAX];
    int r = real(path, p);
    wait_latency();
    if (r) return r;
    return access(p, mask) == -1 ? -errno : 0;
}

static int sim_readlink(const char *path, char *buf, size_t size) {
    char p[PATH_MAX];
    int r = real(path, p);
    wait_latency();
    if (r) return r;
    ssize_t n = readlink(p, buf, size - 1);
    if (n == -1) return -errno;
    buf[n] = '\0';
    return 0;
}

static int sim_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset,
                       struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
    (void)offset;
    (void)fi;
    (void)flags;
    char p[PATH_MAX];
    int r = real(path, p);
    wait_latency();
    if (r) return r;
    DIR *d = opendir(p);
    if (!d) return -errno;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat st;
        memset(&st, 0, sizeof st);
        st.st_ino = e->d_ino;
        st.st_mode = (mode_t)(e->d_type << 12);
        if (fill(buf, e->d_name, &st, 0, 0)) break;
    }
    closedir(d);
    return 0;
}

static int sim_open(const char *path, struct fuse_file_info *fi) {
    char p[PATH_MAX];
    int r = real(path, p);
    wait_latency();
    if (r) return r;
    if ((fi->flags & O_ACCMODE) != O_RDONLY) return -EROFS;
    int fd = open(p, O_RDONLY | O_NOFOLLOW);
    if (fd == -1) return -errno;
    fi->fh = (uint64_t)fd;
    return 0;
}

static int sim_read(const char *path, char *buf, size_t size, off_t offset, struct fuse_file_info *fi) {
    (void)path;
    wait_latency();
    ssize_t n = pread((int)fi->fh, buf, size, offset);
    return n == -1 ? -errno : (int)n;
}

static int sim_release(const char *path, struct fuse_file_info *fi) {
    (void)path;
    close((int)fi->fh);
    return 0;
}

static int sim_statfs(const char *path, struct statvfs *sv) {
    char p[PATH_MAX];
    int r = real(path, p);
    wait_latency();
    if (r) return r;
    return statvfs(p, sv) == -1 ? -errno : 0;
}

static const struct fuse_operations ops = {
    .init = sim_init,
    .getattr = sim_getattr,
    .access = sim_access,
    .readlink = sim_readlink,
    .readdir = sim_readdir,
    .open = sim_open,
    .read = sim_read,
    .release = sim_release,
    .statfs = sim_statfs,
};

int main(int argc, char *argv[]) {
    struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
    if (fuse_opt_parse(&args, &opt, option_spec, NULL) == -1) return 1;
    /* The first non-option argument is the source; libfuse takes the mount point. */
    for (int i = 1; i < args.argc; i++) {
        if (args.argv[i][0] != '-' && (i == 1 || strcmp(args.argv[i - 1], "-o") != 0)) {
            opt.source = realpath(args.argv[i], NULL);
            if (!opt.source) {
                perror(args.argv[i]);
                return 1;
            }
            for (int j = i; j < args.argc - 1; j++) args.argv[j] = args.argv[j + 1];
            args.argc--;
            break;
        }
    }
    if (!opt.source) {
        fprintf(stderr, "usage: sharesim SOURCE MOUNTPOINT -o latency_us=N [-f]\n");
        return 2;
    }
    int ret = fuse_main(args.argc, args.argv, &ops, NULL);
    fuse_opt_free_args(&args);
    return ret;
}
