/* Decode step time with RelayAttention vs without, on the cpu backend.
 *
 * One batched decode step of the serving engine (hosts/batch_attend.c over
 * engine/forward.c): b jobs, one new row each, every job with the same
 * system prompt of s tokens and c tokens of its own (query and generated
 * tokens). With relay the prefix's KV is stored once and attended in one
 * call for all b rows; without it every job holds its own copy of the
 * prefix KV (the same system text encoded per job) and attends to it
 * alone, as a server without prefix sharing does. Random KV stands in for
 * encoded prompts (the work does not depend on the values); the model is a
 * dummy one from a config.json, small so that attention matters.
 *
 * Prints one line per (b, s): median step times of both (thread CPU time,
 * so other processes on a shared machine do not count) and their ratio,
 * beside the analytic ratio of KV rows read, (s + c) / (s / b + c).
 *
 * Usage: relay_cpu CONFIG.json [--batch 1,4,16,64] [--prefix 256,1024,4096,8192]
 *                              [--own 32] [--reps 7] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "common/error.h"
#include "engine/forward.h"
#include "engine/kv_pool.h"
#include "hosts/batch_attend.h"

/* The step's CPU time on this thread: with one BLAS thread all of the
 * step's work runs here, and a shared machine's other processes do not
 * count (wall time would). */
static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int parse_list(const char *s, int *out, int max)
{
    int n = 0;
    while (*s && n < max) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1)
            return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

/* Fills rows [0, n) of every layer of a sequence with seeded values and
 * positions first..first+n-1. */
static int fill_seq(sr_kv_seq *s, int n, int first, unsigned seed, float *tmp_k, float *tmp_v,
                    int32_t *tmp_pos)
{
    const int kd = s->pool->kv_dim;
    for (int l = 0; l < s->pool->n_layers; l++) {
        for (size_t i = 0; i < (size_t)n * kd; i++) {
            seed = seed * 1103515245u + 12345u;
            tmp_k[i] = (float)((seed >> 9) & 0xff) / 256.0f - 0.5f;
            seed = seed * 1103515245u + 12345u;
            tmp_v[i] = (float)((seed >> 9) & 0xff) / 256.0f - 0.5f;
        }
        for (int i = 0; i < n; i++)
            tmp_pos[i] = first + i;
        if (kv_seq_write(s, l, tmp_k, tmp_v, tmp_pos, n) != 0)
            return -1;
    }
    return kv_seq_commit(s, n);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One decode step of b jobs, the own sequences holding `len` rows first
 * (the step writes row len; a rerun overwrites it). */
static double step_once(sr_forward *f, sr_batch_attend *A, sr_batch_seg *segs,
                        sr_kv_seq **prefix_of, sr_kv_seq *own, int len, int b, int s, int r)
{
    int32_t ids[4096], pos[4096];
    for (int j = 0; j < b; j++) {
        own[j].len = len;
        ids[j] = (int32_t)((j * 7 + r) % 64 + 3);
        pos[j] = s + len;
        segs[j] = (sr_batch_seg){.row0 = j, .n = 1, .job_id = (uint64_t)j + 1,
                                 .prefix = prefix_of[j], .dest = &own[j]};
    }
    batch_attend_begin(A, segs, b);
    double t0 = now_s();
    int rc = forward_run(f, ids, pos, b, batch_attend, A, 0, NULL);
    double t = now_s() - t0;
    for (int j = 0; j < b && rc == 0; j++)
        rc = segs[j].failed ? sr_error_set("%s", segs[j].error) : kv_seq_commit(&own[j], 1);
    if (rc != 0) {
        fprintf(stderr, "relay_cpu: step failed: %s\n", sr_error_get());
        exit(1);
    }
    return t;
}

/* Median times of `reps` decode steps with relay and without, taken in
 * turns (after one warm-up of each) so drifts of the machine hit both
 * alike; the jobs attend to the same own rows in both. */
static void time_steps(sr_forward *f, sr_batch_attend *A, sr_batch_seg *segs, sr_kv_seq *pre,
                       sr_kv_seq **prefix_of, sr_kv_seq *own, int own_tokens, int b, int s,
                       int reps, double *t_relay, double *t_plain)
{
    double *tr = malloc((size_t)(reps + 1) * sizeof *tr), *tp = malloc((size_t)(reps + 1) * sizeof *tp);
    for (int r = 0; r <= reps; r++) {
        /* relay: every job names the first copy, so they sit side by side
         * with one prefix and are attended in one call */
        for (int j = 0; j < b; j++)
            prefix_of[j] = &pre[0];
        A->relay = true;
        tr[r] = step_once(f, A, segs, prefix_of, own, own_tokens + r, b, s, r);
        for (int j = 0; j < b; j++)
            prefix_of[j] = &pre[j];
        A->relay = false;
        tp[r] = step_once(f, A, segs, prefix_of, own, own_tokens + r, b, s, r);
    }
    qsort(tr + 1, (size_t)reps, sizeof *tr, cmp_double);
    qsort(tp + 1, (size_t)reps, sizeof *tp, cmp_double);
    *t_relay = tr[1 + reps / 2];
    *t_plain = tp[1 + reps / 2];
    free(tr);
    free(tp);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fputs("usage: relay_cpu CONFIG.json [--batch 1,4,16,64] [--prefix 256,1024,4096,8192] "
              "[--own 32] [--reps 7]\n",
              stderr);
        return 2;
    }
    int batches[16] = {1, 4, 16, 64}, n_b = 4, prefixes[16] = {256, 1024, 4096, 8192}, n_s = 4;
    int own_tokens = 32, reps = 7;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--batch"))
            n_b = parse_list(argv[i + 1], batches, 16);
        else if (!strcmp(argv[i], "--prefix"))
            n_s = parse_list(argv[i + 1], prefixes, 16);
        else if (!strcmp(argv[i], "--own"))
            own_tokens = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            reps = atoi(argv[i + 1]);
        else
            n_b = -1;
    }
    if (n_b < 1 || n_s < 1 || own_tokens < 1 || reps < 1 || batches[0] > 4096) {
        fputs("relay_cpu: bad option\n", stderr);
        return 2;
    }
    sr_model m;
    sr_load_options lo = {.format = SR_LOAD_DUMMY, .dummy_seed = 1, .dummy_dtype = SR_DTYPE_F32};
    if (model_load(&m, argv[1], &lo) != 0) {
        fprintf(stderr, "relay_cpu: %s\n", sr_error_get());
        return 1;
    }
    sr_backend *be = backend_cpu_create();
    int max_b = 0, max_s = 0;
    for (int i = 0; i < n_b; i++)
        max_b = batches[i] > max_b ? batches[i] : max_b;
    for (int i = 0; i < n_s; i++)
        max_s = prefixes[i] > max_s ? prefixes[i] : max_s;
    const sr_model_config *c = &m.cfg;
    printf("# relay_cpu: %d layers, hidden %d, %d heads x %d (%d kv heads); own tokens c = %d; "
           "median CPU time of %d steps\n",
           c->n_layers, c->hidden_size, c->n_heads, c->head_dim, c->n_kv_heads, own_tokens, reps);
    printf("%6s %6s %5s %12s %12s %9s %9s\n", "batch", "prefix", "own", "relay ms", "no-relay ms",
           "measured", "analytic");
    sr_forward f;
    sr_batch_attend A;
    if (forward_init(&f, be, &m, max_b) != 0 || batch_attend_init(&A, be, NULL, c, max_b, max_b)) {
        fprintf(stderr, "relay_cpu: %s\n", sr_error_get());
        return 1;
    }
    sr_batch_seg *segs = calloc((size_t)max_b, sizeof *segs);
    sr_kv_seq *pre = calloc((size_t)max_b, sizeof *pre), *own = calloc((size_t)max_b, sizeof *own);
    sr_kv_seq **pre_of = calloc((size_t)max_b, sizeof *pre_of);
    const int kd = c->n_kv_heads * c->head_dim;
    int max_rows = max_s > own_tokens ? max_s : own_tokens;
    float *tk = malloc((size_t)max_rows * kd * sizeof *tk), *tv = malloc((size_t)max_rows * kd * sizeof *tv);
    int32_t *tp = malloc((size_t)max_rows * sizeof *tp);
    for (int si = 0; si < n_s; si++) {
        for (int bi = 0; bi < n_b; bi++) {
            const int b = batches[bi], s = prefixes[si];
            /* b prefix copies (only the first is used with relay), b own
             * sequences with room for the steps */
            const int page = 16;
            int64_t pages = (int64_t)b * ((s + page - 1) / page + (own_tokens + reps + 2 + page) / page + 1);
            sr_kv_pool pool;
            if (kv_pool_init(&pool, be, c, page, (int)pages) != 0) {
                fprintf(stderr, "relay_cpu: %s\n", sr_error_get());
                return 1;
            }
            for (int j = 0; j < b; j++) {
                if (kv_seq_reserve(&pre[j], &pool, NULL, s) != 0 ||
                    fill_seq(&pre[j], s, 0, 99, tk, tv, tp) != 0 ||
                    kv_seq_reserve(&own[j], &pool, NULL, own_tokens + reps + 2) != 0 ||
                    fill_seq(&own[j], own_tokens, s, 1000u + (unsigned)j, tk, tv, tp) != 0) {
                    fprintf(stderr, "relay_cpu: %s\n", sr_error_get());
                    return 1;
                }
            }
            double t_relay, t_plain;
            time_steps(&f, &A, segs, pre, pre_of, own, own_tokens, b, s, reps, &t_relay, &t_plain);
            /* the own rows attended grow by one per step: count the middle */
            int cc = own_tokens + reps / 2 + 1;
            double analytic = (double)(s + cc) / ((double)s / b + cc);
            printf("%6d %6d %5d %12.3f %12.3f %9.2f %9.2f\n", b, s, cc, t_relay * 1e3,
                   t_plain * 1e3, t_plain / t_relay, analytic);
            fflush(stdout);
            for (int j = 0; j < b; j++) {
                kv_seq_release(&pre[j]);
                kv_seq_release(&own[j]);
            }
            kv_pool_free(&pool);
        }
    }
    free(tk);
    free(tv);
    free(tp);
    free(segs);
    free(pre);
    free(own);
    free(pre_of);
    batch_attend_free(&A);
    forward_free(&f);
    backend_destroy(be);
    model_free(&m);
    return 0;
}
