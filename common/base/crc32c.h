/*
 * crc32c.h - CRC-32C (Castagnoli) at memory speed: the checksum of raw wire frames, weight
 * snapshots and their chunks, and checkpoints. Thread-safe; no state to set up.
 */
#ifndef RLHF_CRC32C_H
#define RLHF_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* CRC-32C continuing from `crc` (0 to start). Uses the SSE4.2 crc32 instruction on three
 * interleaved streams where the CPU has it (several GB/s), a table otherwise. */
uint32_t crc32c(uint32_t crc, const void *data, size_t len);

/* Copies len bytes from src to dst (not overlapping) and returns their CRC-32C, continuing
 * from crc, in one pass over the memory. Large copies bypass the cache (streaming stores): meant
 * for buffers that are not read again right away, like a snapshot being received. */
uint32_t crc32c_copy(uint32_t crc, void *dst, const void *src, size_t len);

/* The CRC-32C of A followed by B, from crc_a, crc_b and len_b (as zlib's crc32_combine). */
uint32_t crc32c_combine(uint32_t crc_a, uint32_t crc_b, size_t len_b);

#endif
