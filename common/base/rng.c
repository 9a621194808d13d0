/*
 * rng.c - Philox4x32-10 draws through Random123's C interface (see rng.h).
 */
#include "base/rng.h"

#include <math.h>

#include <Random123/philox.h>

void rng_block(uint64_t seed, uint64_t stream, uint64_t counter, uint32_t out[4]) {
    philox4x32_key_t k = {{(uint32_t)seed, (uint32_t)(seed >> 32)}};
    philox4x32_ctr_t c = {
        {(uint32_t)counter, (uint32_t)(counter >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)}};
    philox4x32_ctr_t r = philox4x32(c, k);
    for (int i = 0; i < 4; i++) out[i] = r.v[i];
}

/* (0,1): the top 24 bits centred in their bucket, so neither 0 nor 1 is ever returned. */
static float u01(uint32_t x) {
    return ((float)(x >> 8) + 0.5f) * (1.0f / 16777216.0f);
}

float rng_uniform(uint64_t seed, uint64_t stream, uint64_t counter) {
    uint32_t w[4];
    rng_block(seed, stream, counter, w);
    return u01(w[0]);
}

double rng_uniform53(uint64_t seed, uint64_t stream, uint64_t counter) {
    uint32_t w[4];
    rng_block(seed, stream, counter, w);
    uint64_t bits = ((uint64_t)w[0] << 21) ^ (w[1] >> 11); /* 53 bits */
    return ((double)bits + 0.5) * (1.0 / 9007199254740992.0);
}

float rng_normal(uint64_t seed, uint64_t stream, uint64_t counter) {
    uint32_t w[4];
    rng_block(seed, stream, counter, w);
    double u1 = u01(w[0]), u2 = u01(w[1]);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}
