/*
 * The workload of the Linux guest (pyqemu/machine/linuxguest.py): O_DIRECT
 * writes to a block device, at random offsets or with a fixed stride, with
 * a periodic fsync, reporting progress on stdout (the serial console).
 *
 * Why a program of our own rather than fio: it is one static binary with
 * no libraries to copy into the initramfs, and its offsets come from a
 * seeded splitmix64 generator that pyqemu reimplements, so a test can
 * recompute exactly which blocks the first N writes touched (the serial
 * console says how many writes were done) and hold the incremental backup
 * to that, instead of trusting the bitmap it is checking.
 *
 * With L = (length / bs) * bs (the region in whole blocks), write n
 * (counting from 0) goes to
 *     offset + (splitmix64_n(seed) % (length / bs)) * bs    (stride 0)
 *     offset + ((n * stride) % L) / bs * bs                  (stride > 0)
 * and fills the block with a pattern derived from n, never all zeroes, so
 * every write changes the block and no layer can skip it as a zero write:
 * its first 8 bytes are n << 20 | 1 << 63.
 *
 * Why a stride: what live bitmap migration resends depends on how the
 * writes spread over the 1 KiB bitmap chunks, not only on their rate.
 * Stride = bs writes sequentially (a chunk is dirtied again and again,
 * then left alone); stride = the disk span of one chunk dirties a new
 * chunk with every write, the worst case per write; a small random region
 * is a hot set of a few chunks.
 *
 * Output, one line each, all numbers decimal:
 *     writer started dev=D size=S bs=B offset=O length=L rate=R fsync=F
 *         seed=X kick=K stride=T
 *     W <writes done>            every `report` writes
 *     writer stall: write N took T ms   a write took longer than 0.5 s
 *     writer error: <what>       then exit 1 (init exits, the kernel panics
 *                                and QEMU, run with -no-reboot, exits)
 *
 * With -k MS, a child process reads the first block every MS milliseconds
 * (O_DIRECT, so each read is a request to the device).  A real guest has
 * such background I/O; the writer alone has one request in flight at a
 * time, so a completion interrupt lost across a migration (seen with
 * virtio-blk on an iothread under TCG: QEMU has completed every request,
 * the guest waits forever) hangs it for good, while the next completion
 * of another request makes the driver reap the lost one.  The stall line
 * keeps such an event visible either way.
 *
 * Built by pyqemu with `gcc -static -O2`; also runs on a host against a
 * file or a loop device for debugging.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <signal.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct options {
    const char *dev;
    uint64_t bs;            /* bytes per write, a multiple of 512 */
    uint64_t offset;        /* start of the written region */
    uint64_t length;        /* its length, 0 = to the end of the device */
    uint64_t rate;          /* writes per second, 0 = as fast as possible */
    uint64_t fsync_every;   /* writes between fsyncs, 0 = never */
    uint64_t report;        /* writes between progress lines */
    uint64_t seed;
    uint64_t count;         /* stop after this many writes, 0 = never */
    uint64_t kick_ms;       /* background read period, 0 = none */
    uint64_t stride;        /* bytes between writes, 0 = random offsets */
};

static void die(const char *what)
{
    dprintf(1, "writer error: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* splitmix64: tiny, well distributed and easy to reimplement in Python. */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t number(const char *s, const char *name)
{
    char *end;
    errno = 0;
    uint64_t v = strtoull(s, &end, 0);
    if (errno || *end || end == s) {
        dprintf(1, "writer error: bad %s '%s'\n", name, s);
        exit(1);
    }
    return v;
}

static void parse(int argc, char **argv, struct options *o)
{
    int c;
    while ((c = getopt(argc, argv, "d:b:o:l:r:f:n:s:c:k:t:")) != -1) {
        switch (c) {
        case 'd': o->dev = optarg; break;
        case 'b': o->bs = number(optarg, "bs"); break;
        case 'o': o->offset = number(optarg, "offset"); break;
        case 'l': o->length = number(optarg, "length"); break;
        case 'r': o->rate = number(optarg, "rate"); break;
        case 'f': o->fsync_every = number(optarg, "fsync"); break;
        case 'n': o->report = number(optarg, "report"); break;
        case 's': o->seed = number(optarg, "seed"); break;
        case 'c': o->count = number(optarg, "count"); break;
        case 'k': o->kick_ms = number(optarg, "kick"); break;
        case 't': o->stride = number(optarg, "stride"); break;
        default:
            dprintf(1, "writer error: usage: %s -d DEV [-b BS] [-o OFFSET] "
                    "[-l LENGTH] [-r RATE] [-f FSYNC] [-n REPORT] [-s SEED] "
                    "[-c COUNT] [-k MS] [-t STRIDE]\n", argv[0]);
            exit(1);
        }
    }
}

static uint64_t device_size(int fd)
{
    struct stat st;
    uint64_t size;
    if (fstat(fd, &st) < 0)
        die("fstat");
    if (S_ISREG(st.st_mode))
        return st.st_size;
    if (ioctl(fd, BLKGETSIZE64, &size) < 0)
        die("BLKGETSIZE64");
    return size;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The background reader of -k: one O_DIRECT read every kick_ms. */
static pid_t start_reader(const struct options *o)
{
    pid_t pid = fork();
    if (pid != 0) {
        if (pid < 0)
            die("fork");
        return pid;
    }
    int fd = open(o->dev, O_RDONLY | O_DIRECT);
    void *buf;
    if (fd < 0 || posix_memalign(&buf, 4096, 4096))
        die("reader");
    struct timespec ts = { o->kick_ms / 1000, (o->kick_ms % 1000) * 1000000L };
    for (;;) {
        if (pread(fd, buf, 4096, 0) != 4096)
            die("reader pread");
        nanosleep(&ts, NULL);
    }
}

/* Sleep until write n is due, so that the average rate is o->rate. */
static void pace(const struct options *o, double start, uint64_t n)
{
    double due = start + (double)n / o->rate, wait = due - now();
    if (wait > 0) {
        struct timespec ts = { (time_t)wait, (long)((wait - (time_t)wait) * 1e9) };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
            ;
    }
}

int main(int argc, char **argv)
{
    struct options o = { .dev = "/dev/vda", .bs = 4096, .fsync_every = 64,
                         .report = 16, .seed = 1 };
    parse(argc, argv, &o);
    if (o.bs == 0 || o.bs % 512 || o.report == 0) {
        dprintf(1, "writer error: bs must be a multiple of 512, report > 0\n");
        return 1;
    }

    int fd = open(o.dev, O_RDWR | O_DIRECT);
    if (fd < 0)
        die(o.dev);
    uint64_t size = device_size(fd);
    if (o.length == 0 && o.offset < size)
        o.length = size - o.offset;
    uint64_t blocks = o.length / o.bs;
    if (o.offset % o.bs || blocks == 0 || o.offset + o.length > size) {
        dprintf(1, "writer error: region %" PRIu64 "+%" PRIu64 " does not "
                "fit %" PRIu64 "-byte writes on a %" PRIu64 "-byte device\n",
                o.offset, o.length, o.bs, size);
        return 1;
    }

    uint64_t *buf;
    errno = posix_memalign((void **)&buf, 4096, o.bs);
    if (errno)
        die("posix_memalign");

    dprintf(1, "writer started dev=%s size=%" PRIu64 " bs=%" PRIu64
            " offset=%" PRIu64 " length=%" PRIu64 " rate=%" PRIu64
            " fsync=%" PRIu64 " seed=%" PRIu64 " kick=%" PRIu64 " stride=%"
            PRIu64 "\n", o.dev, size, o.bs, o.offset, o.length, o.rate,
            o.fsync_every, o.seed, o.kick_ms, o.stride);
    pid_t reader = o.kick_ms ? start_reader(&o) : 0;

    uint64_t state = o.seed;
    double start = now();
    for (uint64_t n = 0; o.count == 0 || n < o.count; n++) {
        /* 128 bits: n * stride never wraps, as in Python's integers */
        uint64_t off = o.stride
            ? o.offset + (uint64_t)((unsigned __int128)n * o.stride
                                    % (blocks * o.bs)) / o.bs * o.bs
            : o.offset + (splitmix64(&state) % blocks) * o.bs;
        /* never zero: bit 63 is always set */
        for (uint64_t i = 0; i < o.bs / 8; i++)
            buf[i] = (n << 20 | i) | 1ULL << 63;
        if (o.rate)
            pace(&o, start, n);
        double t = now();
        ssize_t done = pwrite(fd, buf, o.bs, (off_t)off);
        if (done < 0)
            die("pwrite");
        if (now() - t > 0.5)
            dprintf(1, "writer stall: write %" PRIu64 " took %.0f ms\n", n,
                    (now() - t) * 1000);
        if ((uint64_t)done != o.bs) {
            dprintf(1, "writer error: short write at %" PRIu64 "\n", off);
            return 1;
        }
        if (o.fsync_every && (n + 1) % o.fsync_every == 0 && fsync(fd) < 0)
            die("fsync");
        if ((n + 1) % o.report == 0)
            dprintf(1, "W %" PRIu64 "\n", n + 1);
    }
    if (fsync(fd) < 0)
        die("fsync");
    if (reader)
        kill(reader, SIGKILL);
    dprintf(1, "writer done %" PRIu64 "\n", o.count);
    return 0;
}
