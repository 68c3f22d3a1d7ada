"""QEMU's util/hbitmap.c in Python: the C declarations and library
(:mod:`ffi`) and the object that owns a bitmap (:mod:`hbitmap`)."""
