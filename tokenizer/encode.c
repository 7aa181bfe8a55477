/* tokenizer_encode: the pipeline of the reference implementation. The input
 * is split on added tokens that match raw text; every other segment is
 * normalized, split again on added tokens that match normalized text, pre-
 * tokenized into words, and each word goes through BPE. add_special then
 * wraps the ids in the post-processor's template. */
#include "common/error.h"
#include "tokenizer/tokenizer_internal.h"
#include "tokenizer/utf8.h"

typedef struct {
    sr_buf norm;
    sr_segments segs;
    sr_pieces pieces, scratch;
} encode_work;

static int encode_normalized(const sr_tokenizer *t, encode_work *w, const char *s, size_t n,
                             bool first, sr_ids *out)
{
    pieces_clear(&w->pieces);
    if (pieces_push(&w->pieces, s, n, first))
        return -1;
    if (t->pretok && pretok_apply(t->pretok, &w->pieces, &w->scratch))
        return -1;
    for (size_t i = 0; i < w->pieces.n; i++)
        if (bpe_encode_word(&t->bpe, pieces_str(&w->pieces, i), w->pieces.items[i].len, out))
            return -1;
    return 0;
}

static int encode_segment(const sr_tokenizer *t, encode_work *w, const char *s, size_t n,
                          bool first, sr_ids *out)
{
    const char *text = s;
    size_t len = n;
    if (t->normalizer) {
        w->norm.len = 0;
        if (normalizer_apply(t->normalizer, s, n, &w->norm))
            return -1;
        text = w->norm.data ? w->norm.data : "";
        len = w->norm.len;
    }
    if (t->norm_set.n == 0)
        return encode_normalized(t, w, text, len, first, out);
    w->segs.n = 0;
    if (added_split(&t->norm_set, t->added, &t->word_re, text, len, &w->segs))
        return -1;
    /* Copy the segment list: encode_normalized does not touch it, but the
     * normalized text must stay put while its pieces are encoded. */
    for (size_t i = 0; i < w->segs.n; i++) {
        sr_segment g = w->segs.items[i];
        if (g.id >= 0) {
            if (ids_push(out, g.id))
                return -1;
        } else if (encode_normalized(t, w, text + g.start, g.end - g.start,
                                     first && g.start == 0, out)) {
            return -1;
        }
    }
    return 0;
}

int tokenizer_encode(const sr_tokenizer *t, const char *text, size_t len, bool add_special,
                     int32_t **ids, size_t *n_ids)
{
    *ids = NULL;
    *n_ids = 0;
    size_t bad;
    if (utf8_validate(text, len, &bad))
        return sr_error_set("tokenizer: input is not valid UTF-8 at byte offset %zu (byte 0x%02X)",
                            bad, (unsigned)(unsigned char)text[bad]);
    sr_ids out;
    ids_init(&out);
    encode_work w;
    buf_init(&w.norm);
    w.segs = (sr_segments){0};
    pieces_init(&w.pieces);
    pieces_init(&w.scratch);
    sr_segments raw = {0};
    int rc = 0;
    if (add_special)
        rc = ids_append(&out, t->post_before.data, t->post_before.n);
    if (!rc) {
        if (t->raw_set.n == 0) {
            if (len)
                rc = encode_segment(t, &w, text, len, true, &out);
        } else {
            rc = added_split(&t->raw_set, t->added, &t->word_re, text, len, &raw);
            for (size_t i = 0; i < raw.n && !rc; i++) {
                sr_segment g = raw.items[i];
                if (g.id >= 0)
                    rc = ids_push(&out, g.id);
                else
                    rc = encode_segment(t, &w, text + g.start, g.end - g.start, g.start == 0,
                                        &out);
            }
        }
    }
    if (!rc && add_special)
        rc = ids_append(&out, t->post_after.data, t->post_after.n);
    segments_free(&raw);
    segments_free(&w.segs);
    buf_free(&w.norm);
    pieces_free(&w.pieces);
    pieces_free(&w.scratch);
    if (rc) {
        ids_free(&out);
        return -1;
    }
    if (!out.data && ids_push(&out, 0) == 0)
        out.n = 0; /* always hand back an allocation the caller can free */
    if (!out.data)
        return -1;
    *ids = out.data;
    *n_ids = out.n;
    return 0;
}
