/*
 * A tiny guest for -machine pc, booted by SeaBIOS from the first IDE disk:
 * it writes to the second IDE disk (primary slave) forever, and reports
 * progress on COM1, so migration tests have a real workload whose own
 * disk I/O dirties bitmaps through an emulated controller.
 *
 * Each iteration writes SECTORS sectors (ATA PIO, WRITE SECTORS EXT) at
 * LBA (n * STRIDE) & (SPAN - 1), then, every REPORT writes, prints
 * "W<n in hex>\n" on the serial port.  STRIDE, SPAN (a power of two) and
 * REPORT come from the build (-D...), so a test can choose where on the
 * disk the guest writes.  LBAs stay below 2^32 sectors (2 TiB).
 *
 * What a sector holds: with -DSTAMP, 32 copies of a 16-byte record
 *     "PQWR", the sector's own LBA (u64 LE), n (u32 LE)
 * so that a block written to, or restored at, the wrong place, or an
 * older write's block, differs from the right one (a restored backup is
 * compared with the disk).  Without STAMP, the 512 bytes at DATA (0x8000:
 * zeroed memory), the same for every sector.
 *
 * Real mode, 16-bit code, one 512-byte boot sector; built with the
 * machine's gcc and ld (see pyqemu/machine/guest.py).
 */

#ifndef STRIDE
#define STRIDE 2056         /* 1 MiB + 4 KiB: every write hits new granules */
#endif
#ifndef SPAN
#define SPAN 0x80000000     /* 1 TiB of 512-byte sectors */
#endif
#ifndef SECTORS
#define SECTORS 8
#endif
#ifndef REPORT
#define REPORT 16
#endif
#ifndef DATA
#define DATA 0x8000         /* without STAMP, each sector gets 512 bytes
                               from here */
#endif
#define MAGIC_LO    0x5150  /* "PQ" */
#define MAGIC_HI    0x5257  /* "WR" */

#define ATA_DATA    0x1f0
#define ATA_COUNT   0x1f2
#define ATA_LBA0    0x1f3
#define ATA_LBA1    0x1f4
#define ATA_LBA2    0x1f5
#define ATA_DRIVE   0x1f6
#define ATA_STATUS  0x1f7   /* read */
#define ATA_CMD     0x1f7   /* write */
#define ATA_BSY     0x80
#define ATA_DRQ     0x08
#define COM1        0x3f8

    .code16
    .text
    .globl _start
_start:
    cli
    xorw    %ax, %ax
    movw    %ax, %ds
    movw    %ax, %es
    movw    %ax, %ss
    movw    $0x7c00, %sp
    cld

    /* COM1: 115200 8N1 */
    movw    $COM1 + 1, %dx
    xorb    %al, %al
    outb    %al, %dx            /* no interrupts */
    movw    $COM1 + 3, %dx
    movb    $0x80, %al
    outb    %al, %dx            /* DLAB */
    movw    $COM1, %dx
    movb    $1, %al
    outb    %al, %dx            /* divisor 1 */
    movw    $COM1 + 1, %dx
    xorb    %al, %al
    outb    %al, %dx
    movw    $COM1 + 3, %dx
    movb    $0x03, %al
    outb    %al, %dx            /* 8N1 */

    xorl    %ebp, %ebp          /* n: writes done */

next_write:
    movl    %ebp, %eax
    imull   $STRIDE, %eax, %eax
    andl    $(SPAN - 1), %eax
    movl    %eax, %ebx          /* LBA[31:0] */

    call    ata_wait_idle
    movw    $ATA_DRIVE, %dx
    movb    $0x50, %al          /* LBA mode, slave */
    outb    %al, %dx
    /* LBA48: high bytes first, then low bytes */
    movw    $ATA_COUNT, %dx
    xorb    %al, %al
    outb    %al, %dx            /* count[15:8] */
    movw    $ATA_LBA0, %dx
    movl    %ebx, %eax
    shrl    $24, %eax
    outb    %al, %dx            /* LBA[31:24] */
    movw    $ATA_LBA1, %dx
    xorb    %al, %al
    outb    %al, %dx            /* LBA[39:32] */
    movw    $ATA_LBA2, %dx
    outb    %al, %dx            /* LBA[47:40] */
    movw    $ATA_COUNT, %dx
    movb    $SECTORS, %al
    outb    %al, %dx            /* count[7:0] */
    movw    $ATA_LBA0, %dx
    movb    %bl, %al
    outb    %al, %dx            /* LBA[7:0] */
    movw    $ATA_LBA1, %dx
    movb    %bh, %al
    outb    %al, %dx            /* LBA[15:8] */
    movw    $ATA_LBA2, %dx
    movl    %ebx, %eax
    shrl    $16, %eax
    outb    %al, %dx            /* LBA[23:16] */
    movw    $ATA_CMD, %dx
    movb    $0x34, %al          /* WRITE SECTORS EXT */
    outb    %al, %dx

    movl    %ebx, %edi          /* LBA of the sector being sent */
    movw    $SECTORS, %cx
sector:
    pushw   %cx
    movw    $ATA_STATUS, %dx
1:  inb     %dx, %al
    testb   $ATA_BSY, %al
    jnz     1b
    testb   $ATA_DRQ, %al
    jz      1b
    movw    $ATA_DATA, %dx
#ifdef STAMP
    movw    $32, %cx            /* 16-byte records per sector */
4:  movw    $MAGIC_LO, %ax
    outw    %ax, %dx
    movw    $MAGIC_HI, %ax
    outw    %ax, %dx
    movl    %edi, %eax
    outw    %ax, %dx            /* LBA[15:0] */
    shrl    $16, %eax
    outw    %ax, %dx            /* LBA[31:16] */
    xorw    %ax, %ax
    outw    %ax, %dx            /* LBA[47:32] */
    outw    %ax, %dx            /* LBA[63:48] */
    movl    %ebp, %eax
    outw    %ax, %dx            /* n[15:0] */
    shrl    $16, %eax
    outw    %ax, %dx            /* n[31:16] */
    loop    4b
#else
    movw    $DATA, %si
    movw    $256, %cx
    rep outsw
#endif
    incl    %edi
    popw    %cx
    loop    sector

    incl    %ebp
    movl    %ebp, %eax
    andl    $(REPORT - 1), %eax
    jnz     next_write

    /* report: 'W', 8 hex digits of n, '\n' */
    movb    $'W', %al
    call    putc
    movw    $8, %cx
    movl    %ebp, %ebx
2:  roll    $4, %ebx
    movb    %bl, %al
    andb    $0x0f, %al
    addb    $'0', %al
    cmpb    $'9', %al
    jbe     3f
    addb    $('a' - '9' - 1), %al
3:  call    putc
    loop    2b
    movb    $'\n', %al
    call    putc
    jmp     next_write

ata_wait_idle:
    movw    $ATA_STATUS, %dx
1:  inb     %dx, %al
    testb   $ATA_BSY, %al
    jnz     1b
    ret

putc:
    movw    $COM1, %dx
    outb    %al, %dx
    ret

    .org    510
    .byte   0x55, 0xaa
