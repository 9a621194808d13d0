/*
 * rng.h - counter-based random numbers (Philox4x32-10 from the Random123 library).
 *
 * A draw is a pure function of (seed, stream, counter): no state to carry, nothing that depends
 * on thread count, batch composition or which process asks. Weight initialisation uses
 * stream = tensor id and counter = element index; sampling (later) uses the sequence index and
 * position. Each call yields 128 random bits; the helpers below turn them into numbers.
 */
#ifndef RLHF_RNG_H
#define RLHF_RNG_H

#include <stdint.h>

/* The four 32-bit words of Philox4x32-10 for key `seed` and counter (counter, stream). */
void rng_block(uint64_t seed, uint64_t stream, uint64_t counter, uint32_t out[4]);

/* A uniform float in the open interval (0, 1), from the first word of the block. */
float rng_uniform(uint64_t seed, uint64_t stream, uint64_t counter);

/* A uniform double in the open interval (0, 1) with 53 random bits (two words of the block):
 * fine enough that a token of probability 1e-12 is drawn at its true rate. */
double rng_uniform53(uint64_t seed, uint64_t stream, uint64_t counter);

/* A standard normal float (Box-Muller on the first two words of the block). */
float rng_normal(uint64_t seed, uint64_t stream, uint64_t counter);

#endif
