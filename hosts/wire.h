/* A flat little-endian byte stream for the messages the query host
 * broadcasts (step plans, job descriptors): append on one side, read back
 * with bounds checks on the other. Errors say the message was short, which
 * means ranks running different builds. */
#ifndef SR_HOSTS_WIRE_H
#define SR_HOSTS_WIRE_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t *buf;
    size_t len, cap;
    int failed;           /* an append ran out of memory */
} sr_wire_out;

void wire_out_reset(sr_wire_out *w);       /* keeps the buffer */
void wire_out_free(sr_wire_out *w);
void wire_put(sr_wire_out *w, const void *src, size_t n);
void wire_put_i32(sr_wire_out *w, int32_t v);
void wire_put_u64(sr_wire_out *w, uint64_t v);
/* 0, or -1 with sr_error set if an append failed. */
int wire_out_check(const sr_wire_out *w);

typedef struct {
    const uint8_t *buf;
    size_t len, off;
} sr_wire_in;

int wire_get(sr_wire_in *r, void *dst, size_t n);
int wire_get_i32(sr_wire_in *r, int32_t *v);
int wire_get_u64(sr_wire_in *r, uint64_t *v);
/* A pointer to the next n bytes (no copy), or NULL with sr_error set. */
const void *wire_take(sr_wire_in *r, size_t n);

#endif
