/*
 * test_crc32c.c - CRC-32C (common/base/crc32c.h) against a bit-by-bit reference: the standard
 * check value, lengths around every loop boundary of the three-way and table paths, unaligned
 * starts, the copying variant, continuing and combining.
 */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "base/crc32c.h"
#include "test.h"

static uint64_t rng_state;
static uint64_t next_u64(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* Deterministic bytes from a seed. */
static uint8_t *make_bytes(uint64_t seed, size_t bytes) {
    uint8_t *p = malloc(bytes);
    rng_state = 0x9E3779B97F4A7C15ULL * (seed + 1);
    for (size_t i = 0; i < bytes; i++) p[i] = (uint8_t)next_u64();
    return p;
}

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* CRC-32C bit by bit (reflected polynomial 0x82F63B78): the independent reference */
static uint32_t ref_crc32c(const void *data, size_t n) {
    const uint8_t *p = data;
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1)));
    }
    return c ^ 0xFFFFFFFFu;
}

static void test_crc32c(void) {
    /* the standard check value of CRC-32C */
    CHECK_EQ(ref_crc32c("123456789", 9), 0xE3069283u);
    CHECK_EQ(crc32c(0, "123456789", 9), 0xE3069283u);
    CHECK_EQ(crc32c(0, "", 0), 0);
    size_t max = 200000;
    uint8_t *buf = make_bytes(7, max + 16), *dst = malloc(max + 16);
    size_t lens[] = {0, 1, 7, 8, 255, 256, 767, 768, 769, 3 * 8192, 3 * 8192 + 5, 100003, max};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++)
        for (size_t off = 0; off < 9; off += 3) { /* unaligned starts too */
            size_t n = lens[k];
            uint32_t ref = ref_crc32c(buf + off, n);
            CHECK_EQ(crc32c(0, buf + off, n), ref);
            memset(dst, 0, max + 16);
            CHECK_EQ(crc32c_copy(0, dst + off, buf + off, n), ref);
            CHECK(memcmp(dst + off, buf + off, n) == 0);
            /* continuing and combining */
            size_t a = n / 3;
            CHECK_EQ(crc32c(crc32c(0, buf + off, a), buf + off + a, n - a), ref);
            CHECK_EQ(
                crc32c_combine(ref_crc32c(buf + off, a), ref_crc32c(buf + off + a, n - a), n - a),
                ref);
        }
    /* speed, for the record (the fetcher checks every byte it copies) */
    size_t big = 64u << 20;
    uint8_t *b = make_bytes(8, big), *d = malloc(big);
    memset(d, 1, big); /* pages faulted in: the copy is measured, not the kernel */
    double t0 = now_ms();
    uint32_t c1 = crc32c(0, b, big);
    double t1 = now_ms();
    uint32_t c2 = crc32c_copy(0, d, b, big);
    double t2 = now_ms();
    uint32_t c3 = crc32c(0, b, big);
    double t3 = now_ms();
    CHECK_EQ(c1, c3);
    CHECK_EQ(c2, c3);
    fprintf(stderr, "  crc32c 64 MiB: %.2f GB/s, with copy %.2f GB/s, again %.2f GB/s\n",
            big / (t1 - t0) / 1e6, big / (t2 - t1) / 1e6, big / (t3 - t2) / 1e6);
    free(b), free(d), free(buf), free(dst);
}

int main(void) {
    RUN(test_crc32c);
    return TEST_REPORT();
}
