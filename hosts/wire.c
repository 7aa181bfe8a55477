#include "hosts/wire.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"

void wire_out_reset(sr_wire_out *w)
{
    w->len = 0;
    w->failed = 0;
}

void wire_out_free(sr_wire_out *w)
{
    free(w->buf);
    memset(w, 0, sizeof *w);
}

void wire_put(sr_wire_out *w, const void *src, size_t n)
{
    if (w->failed)
        return;
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 1024;
        while (cap < w->len + n)
            cap *= 2;
        uint8_t *nb = realloc(w->buf, cap);
        if (!nb) {
            w->failed = 1;
            return;
        }
        w->buf = nb;
        w->cap = cap;
    }
    if (n)
        memcpy(w->buf + w->len, src, n);
    w->len += n;
}

void wire_put_i32(sr_wire_out *w, int32_t v)
{
    wire_put(w, &v, sizeof v);
}

void wire_put_u64(sr_wire_out *w, uint64_t v)
{
    wire_put(w, &v, sizeof v);
}

int wire_out_check(const sr_wire_out *w)
{
    return w->failed ? sr_error_set("out of memory building a message of %zu bytes", w->len) : 0;
}

const void *wire_take(sr_wire_in *r, size_t n)
{
    if (r->off + n > r->len || r->off + n < r->off) {
        sr_error_set("message truncated: %zu bytes, needed %zu (ranks running different "
                     "starrelayd builds?)",
                     r->len, r->off + n);
        return NULL;
    }
    const void *p = r->buf + r->off;
    r->off += n;
    return p;
}

int wire_get(sr_wire_in *r, void *dst, size_t n)
{
    const void *p = wire_take(r, n);
    if (!p)
        return -1;
    if (n)
        memcpy(dst, p, n);
    return 0;
}

int wire_get_i32(sr_wire_in *r, int32_t *v)
{
    return wire_get(r, v, sizeof *v);
}

int wire_get_u64(sr_wire_in *r, uint64_t *v)
{
    return wire_get(r, v, sizeof *v);
}
