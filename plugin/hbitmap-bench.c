/*
 * Micro-benchmarks of QEMU's util/hbitmap.c, linked exactly like the
 * shim library, for `pyqemu bench hbitmap`.  Prints one JSON object per
 * measurement on stdout; the Python side compares stock and patched.
 *
 *   hbitmap-bench set PATTERN META N
 *       N single-item hbitmap_set() calls on a 1 TiB, 64 KiB-granularity
 *       bitmap (a BdrvDirtyBitmap's shape), PATTERN "new" (each call sets
 *       a clear bit), "same" (each call re-sets a set bit) or "seq"
 *       (consecutive granules).  META 1 attaches a meta bitmap with one
 *       bit per 1 KiB migration chunk.  Run it under callgrind with
 *       --toggle-collect=hbitmap_set to count instructions per call.
 *
 *   hbitmap-bench serial MIB CHUNK_KIB [OPS]
 *       GiB/s of memcpy, hbitmap_serialize_part, hbitmap_deserialize_part
 *       (no finish), hbitmap_deserialize_finish, and deserializing chunk
 *       by chunk with finish=true (then the time of the final
 *       hbitmap_deserialize_finish, what a migration's COMPLETE costs), on
 *       a MIB MiB bitmap with every third bit set; best of 5 runs each.
 *       The same chunked deserialization without finish shows what the
 *       finishing itself costs.
 *       OPS is a comma-separated subset of the operation names.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */

#include "qemu/osdep.h"
#include "qemu/hbitmap.h"

/* Absent from stock QEMU: resolved at run time, NULL there. */
HBitmap *hbitmap_create_meta(HBitmap *hb, uint64_t chunk_size);
void hbitmap_free_meta(HBitmap *hb);
#pragma weak hbitmap_create_meta
#pragma weak hbitmap_free_meta

#define GRANULARITY 16
#define BITMAP_ITEMS (UINT64_C(1) << 40)
#define MIGRATION_CHUNK_BITS (1024 * 8)

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int bench_set(const char *pattern, int meta, long n)
{
    HBitmap *hb = hbitmap_alloc(BITMAP_ITEMS, GRANULARITY);
    uint64_t granules = BITMAP_ITEMS >> GRANULARITY;
    uint64_t x = 88172645463325252ULL;
    double start, secs;
    long i;

    if (meta) {
        if (!hbitmap_create_meta) {
            printf("{\"error\": \"no meta bitmaps in this build\"}\n");
            return 2;
        }
        hbitmap_create_meta(hb, (uint64_t)MIGRATION_CHUNK_BITS << GRANULARITY);
    }
    if (!strcmp(pattern, "same")) {
        hbitmap_set(hb, 0, BITMAP_ITEMS);
    }
    start = now();
    for (i = 0; i < n; i++) {
        uint64_t g;

        if (!strcmp(pattern, "seq")) {
            g = i % granules;
        } else {
            /* xorshift64: distinct enough, cheap, deterministic */
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            g = x % granules;
        }
        hbitmap_set(hb, g << GRANULARITY, 1);
    }
    secs = now() - start;
    printf("{\"op\": \"set\", \"pattern\": \"%s\", \"meta\": %d, \"n\": %ld, "
           "\"ns_per_call\": %.2f, \"count\": %" PRIu64 "}\n",
           pattern, meta, n, secs * 1e9 / n, hbitmap_count(hb));
    if (meta) {
        hbitmap_free_meta(hb);
    }
    hbitmap_free(hb);
    return 0;
}

typedef void (*SerialOp)(HBitmap *hb, uint8_t *buf, uint64_t size,
                         uint64_t chunk);

static void op_memcpy(HBitmap *hb, uint8_t *buf, uint64_t size, uint64_t chunk)
{
    static uint8_t *dst;
    uint64_t bytes = hbitmap_serialization_size(hb, 0, size);

    if (!dst) {
        dst = g_malloc(bytes);
    }
    memcpy(dst, buf, bytes);
}

static void op_serialize(HBitmap *hb, uint8_t *buf, uint64_t size,
                         uint64_t chunk)
{
    hbitmap_serialize_part(hb, buf, 0, size);
}

static void op_deserialize(HBitmap *hb, uint8_t *buf, uint64_t size,
                           uint64_t chunk)
{
    hbitmap_deserialize_part(hb, buf, 0, size, false);
}

static double finish_seconds;

/* Times only the finish, after an untimed unfinished deserialization */
static void op_finish(HBitmap *hb, uint8_t *buf, uint64_t size, uint64_t chunk)
{
    double start;

    hbitmap_deserialize_part(hb, buf, 0, size, false);
    start = now();
    hbitmap_deserialize_finish(hb);
    finish_seconds = now() - start;
}

/* Deserialize chunk by chunk, as a migration destination receives it */
static void deserialize_chunks(HBitmap *hb, uint8_t *buf, uint64_t size,
                               uint64_t chunk, bool finish)
{
    uint64_t off;

    for (off = 0; off < size; off += chunk) {
        uint64_t count = MIN(chunk, size - off);

        hbitmap_deserialize_part(hb, buf + off / 8, off, count, finish);
    }
}

/* The same chunked copies without finishing: what finishing adds to */
static void op_chunked_nofinish(HBitmap *hb, uint8_t *buf, uint64_t size,
                                uint64_t chunk)
{
    deserialize_chunks(hb, buf, size, chunk, false);
}

static void op_chunked(HBitmap *hb, uint8_t *buf, uint64_t size,
                       uint64_t chunk)
{
    deserialize_chunks(hb, buf, size, chunk, true);
    hbitmap_deserialize_finish(hb);
}

static double best_of(SerialOp op, HBitmap *hb, uint8_t *buf, uint64_t size,
                      uint64_t chunk)
{
    double best = 1e9;
    int i;

    for (i = 0; i < 5; i++) {
        double start = now();

        finish_seconds = -1;
        op(hb, buf, size, chunk);
        best = MIN(best, finish_seconds >= 0 ? finish_seconds : now() - start);
    }
    return best;
}

static int bench_serial(long mib, long chunk_kib, const char *only)
{
    uint64_t size = (uint64_t)mib << 23;          /* bits == items */
    uint64_t chunk = (uint64_t)chunk_kib << 13;   /* items per chunk */
    HBitmap *hb = hbitmap_alloc(size, 0);
    HBitmap *dst = hbitmap_alloc(size, 0);
    uint64_t bytes = hbitmap_serialization_size(hb, 0, size);
    uint8_t *buf = g_malloc(bytes);
    struct {
        const char *name;
        SerialOp op;
        HBitmap *hb;
    } ops[] = {
        { "memcpy", op_memcpy, hb },
        { "serialize_part", op_serialize, hb },
        { "deserialize_part", op_deserialize, dst },
        { "deserialize_finish", op_finish, dst },
        { "deserialize_chunked_nofinish", op_chunked_nofinish, dst },
        { "deserialize_chunked_finish", op_chunked, dst },
    };
    uint64_t i;
    size_t k;

    for (i = 0; i < size; i += 3) {
        hbitmap_set(hb, i, 1);
    }
    hbitmap_serialize_part(hb, buf, 0, size);
    for (k = 0; k < ARRAY_SIZE(ops); k++) {
        double secs;

        if (only && !strstr(only, ops[k].name)) {
            continue;
        }
        secs = best_of(ops[k].op, ops[k].hb, buf, size, chunk);
        printf("{\"op\": \"%s\", \"mib\": %ld, \"chunk_kib\": %ld, "
               "\"seconds\": %.6f, \"gib_per_s\": %.3f}\n", ops[k].name, mib,
               chunk_kib, secs, bytes / secs / (1 << 30));
        if (ops[k].op == op_chunked) {
            double start = now();

            hbitmap_deserialize_finish(dst);
            printf("{\"op\": \"complete\", \"mib\": %ld, "
                   "\"seconds\": %.6f}\n", mib, now() - start);
        }
    }
    if ((!only || strstr(only, "finish")) &&
        (hbitmap_count(dst) != hbitmap_count(hb) ||
         hbitmap_next_dirty(dst, 3, INT64_MAX) != 3)) {
        printf("{\"error\": \"count mismatch after deserialization\"}\n");
        return 1;
    }
    hbitmap_free(hb);
    hbitmap_free(dst);
    g_free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "set")) {
        return bench_set(argv[2], atoi(argv[3]), atol(argv[4]));
    }
    if ((argc == 4 || argc == 5) && !strcmp(argv[1], "serial")) {
        return bench_serial(atol(argv[2]), atol(argv[3]),
                            argc == 5 ? argv[4] : NULL);
    }
    fprintf(stderr, "usage: %s set new|same|seq 0|1 N\n"
            "       %s serial MIB CHUNK_KIB [OPS]\n", argv[0], argv[0]);
    return 1;
}
