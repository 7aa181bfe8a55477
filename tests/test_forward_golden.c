/* The forward pass against transformers: for every fixture model, the fp32
 * logits of the golden prompt's last position within 1e-4 relative, and the
 * greedy continuations token for token (computed here by prefill + decode
 * against the KV cache, one token at a time, as generation does). */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "common/error.h"
#include "engine/forward.h"
#include "engine/kvcache.h"
#include "engine/local_step.h"
#include "tests/check.h"

static int32_t *json_ids(json_t *arr, int *n)
{
    *n = (int)json_array_size(arr);
    int32_t *ids = malloc((size_t)(*n ? *n : 1) * sizeof *ids);
    for (int i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return ids;
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Prefill `prompt` then greedy-decode; chunk = rows per forward call. */
static int run_greedy(sr_backend *be, const sr_model *m, const int32_t *prompt, int n, int max_new,
                      const int32_t *eos, int n_eos, int chunk, int32_t *out, float *first_logits)
{
    sr_forward f;
    sr_kvcache kv;
    if (forward_init(&f, be, m, chunk) != 0 || kvcache_init(&kv, be, &m->cfg, n + max_new) != 0)
        return -1;
    sr_local_step st = {.fwd = &f, .kv = &kv};
    float *logits = malloc((size_t)m->cfg.vocab_size * sizeof *logits);
    int32_t *pos = malloc((size_t)n * sizeof *pos);
    for (int i = 0; i < n; i++)
        pos[i] = i;
    int produced = 0;
    if (local_step(&st, prompt, pos, n, logits) == 0) {
        if (first_logits)
            memcpy(first_logits, logits, (size_t)m->cfg.vocab_size * sizeof *logits);
        for (int g = 0; g < max_new; g++) {
            int32_t id = argmax(logits, m->cfg.vocab_size);
            out[produced++] = id;
            int stop = 0;
            for (int e = 0; e < n_eos; e++)
                stop |= id == eos[e];
            if (stop || g + 1 == max_new)
                break;
            int32_t p = n + g;
            if (local_step(&st, &id, &p, 1, logits) != 0) {
                produced = -1;
                break;
            }
        }
    } else {
        produced = -1;
    }
    free(pos);
    free(logits);
    kvcache_free(&kv);
    forward_free(&f);
    return produced;
}

static void check_model(sr_backend *be, const char *dir)
{
    char path[1100];
    snprintf(path, sizeof path, "%s/golden.json", dir);
    json_t *g = json_load_file(path, 0, NULL);
    CHECK(g != NULL, "cannot read %s", path);
    if (!g)
        return;
    sr_model m;
    sr_load_options opt = {0};
    int loaded = model_load(&m, dir, &opt) == 0;
    CHECK(loaded, "%s: %s", dir, sr_error_get());
    if (!loaded) {
        json_decref(g);
        return;
    }
    int V = m.cfg.vocab_size;
    float *logits = malloc((size_t)V * sizeof *logits);
    json_t *lg = json_object_get(g, "logits");
    if (lg) {
        int n;
        int32_t *ids = json_ids(json_object_get(lg, "ids"), &n);
        json_t *ref = json_object_get(lg, "last_logits");
        /* chunk 5 splits the prompt over several forward calls */
        int chunks[2] = {256, 5};
        for (int c = 0; c < 2; c++) {
            int32_t out[1];
            int got = run_greedy(be, &m, ids, n, 1, NULL, 0, chunks[c], out, logits);
            CHECK(got == 1, "%s: forward failed: %s", dir, sr_error_get());
            double worst = 0, scale = 0;
            for (int i = 0; i < V; i++) {
                double r = json_real_value(json_array_get(ref, (size_t)i));
                scale = fmax(scale, fabs(r));
                worst = fmax(worst, fabs(logits[i] - r));
            }
            CHECK(json_array_size(ref) == (size_t)V && worst / scale <= 1e-4,
                  "%s: logits rel err %g (chunk %d)", dir, worst / scale, chunks[c]);
        }
        free(ids);
    }
    json_t *greedy = json_object_get(g, "greedy");
    size_t gi;
    json_t *gc;
    json_array_foreach(greedy, gi, gc) {
        int n, n_ref;
        int32_t *ids = json_ids(json_object_get(gc, "ids"), &n);
        int32_t *ref = json_ids(json_object_get(gc, "output_ids"), &n_ref);
        int max_new = (int)json_integer_value(json_object_get(gc, "max_new_tokens"));
        int32_t *out = malloc((size_t)max_new * sizeof *out);
        int got = run_greedy(be, &m, ids, n, max_new, m.cfg.eos_token_ids, m.cfg.n_eos, 256, out,
                             NULL);
        int same = got == n_ref && memcmp(out, ref, (size_t)n_ref * sizeof *out) == 0;
        CHECK(same, "%s: greedy case %zu differs (got %d tokens, expected %d)", dir, gi, got,
              n_ref);
        free(ids), free(ref), free(out);
    }
    free(logits);
    model_free(&m);
    json_decref(g);
}

int main(void)
{
    sr_backend *be = backend_cpu_create();
    const char *root = "tests/fixtures";
    DIR *d = opendir(root);
    CHECK(d != NULL, "no %s (run from the source root)", root);
    int models = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char cfg[600];
        snprintf(cfg, sizeof cfg, "%s/%s/golden.json", root, e->d_name);
        FILE *f = fopen(cfg, "r");
        if (!f)
            continue;
        fclose(f);
        snprintf(cfg, sizeof cfg, "%s/%s/config.json", root, e->d_name);
        if (!(f = fopen(cfg, "r")))
            continue;
        fclose(f);
        char dir[600];
        snprintf(dir, sizeof dir, "%s/%s", root, e->d_name);
        check_model(be, dir);
        models++;
    }
    if (d)
        closedir(d);
    CHECK(models >= 3, "expected at least 3 fixture models, found %d", models);
    backend_destroy(be);
    return check_finish("forward_golden");
}
