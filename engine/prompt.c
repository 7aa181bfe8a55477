#include "engine/prompt.h"

#include <stdlib.h>
#include <string.h>

#include "common/error.h"

static int segment_tokenize(sr_ids *seg, const sr_tokenizer *tok, const char *text, int *first,
                            const char *what)
{
    if (!text)
        return 0;
    size_t n = 0;
    if (tokenizer_encode(tok, text, strlen(text), *first, &seg->ids, &n) != 0)
        return sr_error_prefix("%s: ", what);
    seg->n = (int)n;
    *first = 0;
    return 0;
}

int prompt_tokenize(sr_prompt *p, const sr_tokenizer *tok, const char *system,
                    const char *context, const char *query)
{
    memset(p, 0, sizeof *p);
    int first = 1;
    if (segment_tokenize(&p->system, tok, system, &first, "system prompt") != 0 ||
        segment_tokenize(&p->context, tok, context, &first, "context") != 0 ||
        segment_tokenize(&p->query, tok, query, &first, "query") != 0) {
        prompt_free(p);
        return -1;
    }
    return 0;
}

int prompt_total(const sr_prompt *p)
{
    return p->system.n + p->context.n + p->query.n;
}

int prompt_concat(const sr_prompt *p, sr_ids *out)
{
    int n = prompt_total(p);
    out->ids = malloc((size_t)(n > 0 ? n : 1) * sizeof *out->ids);
    if (!out->ids)
        return sr_error_set("out of memory for a %d-token prompt", n);
    out->n = 0;
    const sr_ids *segs[3] = {&p->system, &p->context, &p->query};
    for (int s = 0; s < 3; s++) {
        if (segs[s]->n)
            memcpy(out->ids + out->n, segs[s]->ids, (size_t)segs[s]->n * sizeof *out->ids);
        out->n += segs[s]->n;
    }
    return 0;
}

void prompt_free(sr_prompt *p)
{
    free(p->system.ids);
    free(p->context.ids);
    free(p->query.ids);
    memset(p, 0, sizeof *p);
}
