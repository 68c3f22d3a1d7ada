/*
 * What ctypes cannot do on its own with QEMU's hbitmap API.
 *
 * Everything else (hbitmap_alloc, hbitmap_set, ...) is called directly
 * from Python; the library exports util/hbitmap.c's symbols as built.
 * These helpers exist because:
 *   - HBitmapIter is a caller-allocated struct whose layout depends on
 *     HBITMAP_LEVELS: the shim allocates it so Python needs no layout;
 *   - hbitmap_sha256() reports errors through Error **: the shim turns
 *     them into a string Python can raise;
 *   - strings come back from glib's allocator and must go back to it.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */

#include "qemu/osdep.h"
#include "qemu/hbitmap.h"
#include "qapi/error.h"
#include "qemu-source.h"

/* Bumped when a helper's signature changes; checked by pyqemu/shim/ffi.py. */
#define PYQEMU_SHIM_ABI 1

int pyqemu_shim_abi(void);
const char *pyqemu_shim_tree(void);
HBitmapIter *pyqemu_hbitmap_iter_new(const HBitmap *hb, uint64_t first);
void pyqemu_hbitmap_iter_free(HBitmapIter *hbi);
char *pyqemu_hbitmap_sha256(const HBitmap *hb, char **errmsg);
void pyqemu_free(void *ptr);

int pyqemu_shim_abi(void)
{
    return PYQEMU_SHIM_ABI;
}

/* The git commit of the QEMU tree this library was built from. */
const char *pyqemu_shim_tree(void)
{
    return PYQEMU_QEMU_TREE_HEAD;
}

HBitmapIter *pyqemu_hbitmap_iter_new(const HBitmap *hb, uint64_t first)
{
    HBitmapIter *hbi = g_new0(HBitmapIter, 1);

    hbitmap_iter_init(hbi, hb, first);
    return hbi;
}

void pyqemu_hbitmap_iter_free(HBitmapIter *hbi)
{
    g_free(hbi);
}

char *pyqemu_hbitmap_sha256(const HBitmap *hb, char **errmsg)
{
    Error *err = NULL;
    char *hash = hbitmap_sha256(hb, &err);

    if (!hash) {
        *errmsg = g_strdup(err ? error_get_pretty(err) : "unknown error");
        error_free(err);
    }
    return hash;
}

void pyqemu_free(void *ptr)
{
    g_free(ptr);
}
