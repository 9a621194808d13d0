/*
 * crc32c.c - CRC-32C (Castagnoli), the checksum of every raw frame, snapshot chunk and
 * checkpoint: the SSE4.2 crc32 instruction on three interleaved streams where the CPU has it, a
 * slicing-by-8 table otherwise; a variant that copies while it sums; and combination of two
 * CRCs (as zlib's crc32_combine).
 *
 * Written here rather than taken from a library: zlib has only the other polynomial, and the
 * CRC-32C libraries Debian packages neither copy while they sum (which halves the memory
 * traffic of receiving a snapshot) nor combine CRCs.
 */
#include "base/crc32c.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#define CRC32C_HAVE_SSE42 1
#endif

/* ---- CRC-32C ----------------------------------------------------------------------------------
 */

#define CRC_POLY  0x82F63B78u
#define CRC_LONG  8192 /* bytes per stream of the three-way interleaved loops */
#define CRC_SHORT 256

static uint32_t crc_tab[8][256];   /* slicing-by-8 */
static uint32_t crc_long[4][256];  /* shifts a CRC register over CRC_LONG zero bytes */
static uint32_t crc_short[4][256]; /* ... over CRC_SHORT zero bytes */
static int crc_hw;
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static uint32_t gf2_times(const uint32_t *mat, uint32_t vec) {
    uint32_t sum = 0;
    for (; vec; vec >>= 1, mat++)
        if (vec & 1) sum ^= *mat;
    return sum;
}

static void gf2_square(uint32_t *sq, const uint32_t *mat) {
    for (int n = 0; n < 32; n++) sq[n] = gf2_times(mat, mat[n]);
}

/* The operator for len zero bytes (len a power of two), in op. */
static void zeros_op(uint32_t *op, size_t len) {
    uint32_t odd[32], even[32];
    odd[0] = CRC_POLY; /* one zero bit */
    for (int n = 1; n < 32; n++) odd[n] = 1u << (n - 1);
    gf2_square(even, odd); /* two */
    gf2_square(odd, even); /* four */
    for (;;) {
        gf2_square(even, odd); /* eight bits = one byte, then 4, 16, ... bytes */
        len >>= 1;
        if (!len) {
            memcpy(op, even, sizeof even);
            return;
        }
        gf2_square(odd, even);
        len >>= 1;
        if (!len) {
            memcpy(op, odd, sizeof odd);
            return;
        }
    }
}

static void zeros_table(uint32_t t[4][256], size_t len) {
    uint32_t op[32];
    zeros_op(op, len);
    for (uint32_t n = 0; n < 256; n++)
        for (int k = 0; k < 4; k++) t[k][n] = gf2_times(op, n << (8 * k));
}

static inline uint32_t crc_shift(uint32_t t[4][256], uint32_t c) {
    return t[0][c & 0xFF] ^ t[1][(c >> 8) & 0xFF] ^ t[2][(c >> 16) & 0xFF] ^ t[3][c >> 24];
}

static void crc_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ CRC_POLY : c >> 1;
        crc_tab[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = crc_tab[0][n];
        for (int k = 1; k < 8; k++) {
            c = crc_tab[0][c & 0xFF] ^ (c >> 8);
            crc_tab[k][n] = c;
        }
    }
    zeros_table(crc_long, CRC_LONG);
    zeros_table(crc_short, CRC_SHORT);
#ifdef CRC32C_HAVE_SSE42
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

/* Table version (slicing-by-8 on little-endian machines); dst may be NULL. */
static uint32_t crc_sw(uint32_t crc, uint8_t *dst, const uint8_t *src, size_t len) {
    uint32_t c = ~crc;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    for (; len >= 8; len -= 8, src += 8) {
        uint64_t w;
        memcpy(&w, src, 8);
        if (dst) memcpy(dst, &w, 8), dst += 8;
        uint32_t lo = c ^ (uint32_t)w, hi = (uint32_t)(w >> 32);
        c = crc_tab[7][lo & 0xFF] ^ crc_tab[6][(lo >> 8) & 0xFF] ^ crc_tab[5][(lo >> 16) & 0xFF] ^
            crc_tab[4][lo >> 24] ^ crc_tab[3][hi & 0xFF] ^ crc_tab[2][(hi >> 8) & 0xFF] ^
            crc_tab[1][(hi >> 16) & 0xFF] ^ crc_tab[0][hi >> 24];
    }
#endif
    for (; len; len--, src++) {
        if (dst) *dst++ = *src;
        c = crc_tab[0][(c ^ *src) & 0xFF] ^ (c >> 8);
    }
    return ~c;
}

#ifdef CRC32C_HAVE_SSE42
/* The crc32 instruction has a latency of three cycles and a throughput of one: three
 * independent streams keep it busy, and their CRCs are joined with the zero-byte shift tables
 * (the method of Mark Adler's crc32c.c). dst, when not NULL, receives a copy of the bytes, written
 * with non-temporal stores: a snapshot is far larger than the caches, and streaming it past them
 * skips the read-for-ownership of every destination line (about twice the speed of memcpy plus
 * a separate CRC pass, measured on this project's build machine). */
__attribute__((target("sse4.2"), always_inline)) static inline uint32_t
crc_hw_body(uint32_t crc, uint8_t *dst, const uint8_t *src, size_t len) {
    uint64_t c0 = (uint32_t)~crc;
    for (; len && ((uintptr_t)src & 7); len--) {
        if (dst) *dst++ = *src;
        c0 = _mm_crc32_u8((uint32_t)c0, *src++);
    }
#define CRC_3WAY(N, TABLE)                                                                         \
    while (len >= 3 * (size_t)(N)) {                                                               \
        uint64_t c1 = 0, c2 = 0;                                                                   \
        for (size_t i = 0; i < (N); i += 8) {                                                      \
            uint64_t a, b, c;                                                                      \
            memcpy(&a, src + i, 8);                                                                \
            memcpy(&b, src + (N) + i, 8);                                                          \
            memcpy(&c, src + 2 * (N) + i, 8);                                                      \
            c0 = _mm_crc32_u64(c0, a);                                                             \
            c1 = _mm_crc32_u64(c1, b);                                                             \
            c2 = _mm_crc32_u64(c2, c);                                                             \
            if (dst) {                                                                             \
                _mm_stream_si64((long long *)(void *)(dst + i), (long long)a);                     \
                _mm_stream_si64((long long *)(void *)(dst + (N) + i), (long long)b);               \
                _mm_stream_si64((long long *)(void *)(dst + 2 * (N) + i), (long long)c);           \
            }                                                                                      \
        }                                                                                          \
        c0 = crc_shift(TABLE, (uint32_t)c0) ^ (uint32_t)c1;                                        \
        c0 = crc_shift(TABLE, (uint32_t)c0) ^ (uint32_t)c2;                                        \
        src += 3 * (size_t)(N);                                                                    \
        if (dst) dst += 3 * (size_t)(N);                                                           \
        len -= 3 * (size_t)(N);                                                                    \
    }
    CRC_3WAY(CRC_LONG, crc_long)
    CRC_3WAY(CRC_SHORT, crc_short)
#undef CRC_3WAY
    for (; len >= 8; len -= 8, src += 8) {
        uint64_t a;
        memcpy(&a, src, 8);
        if (dst) memcpy(dst, &a, 8), dst += 8;
        c0 = _mm_crc32_u64(c0, a);
    }
    for (; len; len--) {
        if (dst) *dst++ = *src;
        c0 = _mm_crc32_u8((uint32_t)c0, *src++);
    }
    if (dst) _mm_sfence(); /* the streaming stores are visible before we return */
    return ~(uint32_t)c0;
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw_only(uint32_t crc, const uint8_t *src,
                                                              size_t len) {
    return crc_hw_body(crc, NULL, src, len);
}

__attribute__((target("sse4.2"))) static uint32_t crc_hw_copy(uint32_t crc, uint8_t *dst,
                                                              const uint8_t *src, size_t len) {
    return crc_hw_body(crc, dst, src, len);
}
#endif

uint32_t crc32c(uint32_t crc, const void *data, size_t len) {
    pthread_once(&crc_once, crc_init);
#ifdef CRC32C_HAVE_SSE42
    if (crc_hw) return crc_hw_only(crc, data, len);
#endif
    return crc_sw(crc, NULL, data, len);
}

uint32_t crc32c_copy(uint32_t crc, void *dst, const void *src, size_t len) {
    pthread_once(&crc_once, crc_init);
#ifdef CRC32C_HAVE_SSE42
    if (crc_hw) return crc_hw_copy(crc, dst, src, len);
#endif
    return crc_sw(crc, dst, src, len);
}

uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, size_t len_b) {
    if (!len_b) return crc_a;
    uint32_t odd[32], even[32];
    odd[0] = CRC_POLY;
    for (int n = 1; n < 32; n++) odd[n] = 1u << (n - 1);
    gf2_square(even, odd);
    gf2_square(odd, even);
    for (;;) { /* apply len_b zero bytes to crc_a, one bit of len_b at a time */
        gf2_square(even, odd);
        if (len_b & 1) crc_a = gf2_times(even, crc_a);
        len_b >>= 1;
        if (!len_b) break;
        gf2_square(odd, even);
        if (len_b & 1) crc_a = gf2_times(odd, crc_a);
        len_b >>= 1;
        if (!len_b) break;
    }
    return crc_a ^ crc_b;
}
