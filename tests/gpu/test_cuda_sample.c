/* The cuda backend's sample op against engine/sampler.c, the reference.
 *
 * Each row gets two samplers with the same seed: the host one samples its
 * copy of the logits with sampler_sample, the other draws the uniform for
 * the device with sampler_device_row. The ids must be equal: always for
 * greedy, and for sampling in at least 99.9% of draws (a cumulative sum
 * that lands within fp rounding of a boundary may go either way; the
 * device sums in 64-bit fixed point, the host in double), and always on
 * well-separated logits. Vocabularies from 64 to 256000 (Llama-3's 128256
 * included, odd sizes), batches up to 64 rows, exact ties, -inf / NaN /
 * +inf entries, and the repetition penalty with repeated history ids.
 *
 * Ends with the time of one sampling call against downloading the logits
 * and sampling them on the host, at batch 1 and 64 and vocabulary 128256.
 * Skips (exit 77) when no GPU is visible. SR_TEST_QUICK=1: fewer draws. */
#include <stdint.h>
#include <time.h>

#include "common/clock.h"
#include "engine/sampler.h"
#include "tests/gpu/gpu_test_util.h"

static sr_backend *gpu;
static int quick;

/* Normal deviate from the shared uniform stream (Box-Muller). */
static float gauss(void)
{
    double a = (gpu_frand() + 1.0) * 0.5, b = (gpu_frand() + 1.0) * 0.5;
    if (a < 1e-12)
        a = 1e-12;
    return (float)(sqrt(-2.0 * log(a)) * cos(6.283185307179586 * b));
}

typedef enum { LG_LLM, LG_TIES, LG_SEPARATED, LG_FLAT, LG_SPECIAL, LG_INF } logit_kind;

/* A row like an LLM's: a broad normal body and a few strong tokens. */
static void fill_row(float *x, int V, logit_kind kind)
{
    switch (kind) {
    case LG_LLM:
        for (int i = 0; i < V; i++)
            x[i] = 2.5f * gauss();
        for (int j = 0; j < 6; j++)
            x[(int)((gpu_frand() + 1.0f) * 0.5f * (V - 1))] = 9.0f + 2.0f * gpu_frand();
        break;
    case LG_TIES: /* values on a 0.5 grid: many exact ties, at every boundary */
        for (int i = 0; i < V; i++)
            x[i] = roundf(4.0f * gauss()) * 0.5f;
        break;
    case LG_SEPARATED: /* distinct values 0.25 apart, shuffled */
        for (int i = 0; i < V; i++)
            x[i] = 0.25f * (float)i - 0.125f * (float)V;
        for (int i = V - 1; i > 0; i--) {
            int j = (int)((gpu_frand() + 1.0f) * 0.5f * (float)i);
            if (j > i)
                j = i;
            float t = x[i];
            x[i] = x[j];
            x[j] = t;
        }
        break;
    case LG_FLAT: /* nearly uniform: one bucket holds almost every token */
        for (int i = 0; i < V; i++)
            x[i] = 0.01f * gpu_frand();
        break;
    case LG_SPECIAL: /* masked, NaN and negative entries beside a normal body */
        for (int i = 0; i < V; i++) {
            float r = gpu_frand();
            x[i] = r < -0.6f ? -INFINITY : r > 0.95f ? NAN : 3.0f * gauss();
        }
        break;
    case LG_INF: /* a few +inf: they share all the mass */
        for (int i = 0; i < V; i++)
            x[i] = gauss();
        for (int j = 0; j < 5; j++)
            x[(int)((gpu_frand() + 1.0f) * 0.5f * (V - 1))] = INFINITY;
        break;
    }
}

static const char *kind_name(logit_kind k)
{
    static const char *n[] = {"llm", "ties", "separated", "flat", "special", "inf"};
    return n[k];
}

/* Totals over all sampled (non-greedy) draws on non-separated rows. */
static long g_agree, g_total;

/* R rows of V logits, `draws` tokens each; history of hist_len random ids
 * (repeats included) for the penalty. */
static void run_case(int V, int R, logit_kind kind, const sr_sampling_params *p, int draws,
                     int hist_len)
{
    float *lg = malloc((size_t)R * V * sizeof *lg), *row = malloc((size_t)V * sizeof *row);
    for (int r = 0; r < R; r++)
        fill_row(lg + (size_t)r * V, V, kind);
    int32_t *hist = malloc((size_t)(R * (hist_len > 0 ? hist_len : 1)) * sizeof *hist);
    for (int i = 0; i < R * hist_len; i++)
        hist[i] = i % 3 == 2 ? hist[i - 1] /* repeats: penalised once */
                             : (int32_t)((gpu_frand() + 1.0f) * 0.5f * (float)(V - 1));
    sr_sampler *hs = calloc((size_t)R, sizeof *hs), *ds = calloc((size_t)R, sizeof *ds);
    for (int r = 0; r < R; r++) {
        sr_sampling_params q = *p;
        q.seed = p->seed + (uint64_t)r;
        CHECK(sampler_init(&hs[r], &q, V) == 0 && sampler_init(&ds[r], &q, V) == 0,
              "sampler_init: %s", sr_error_get());
    }
    float *dl = gpu->ops->alloc(gpu, (size_t)R * V * sizeof(float));
    sr_sample_row *rows = calloc((size_t)R, sizeof *rows);
    int32_t *ids = malloc((size_t)R * sizeof *ids);
    long agree = 0, total = 0;
    int first_bad = -1, bad_got = 0, bad_want = 0;
    for (int d = 0; d < draws; d++) {
        CHECK(gpu->ops->upload(gpu, dl, lg, (size_t)R * V * sizeof(float)) == 0, "upload");
        for (int r = 0; r < R; r++)
            CHECK(sampler_device_row(&ds[r], hist_len ? hist + (size_t)r * hist_len : NULL,
                                     (size_t)hist_len, &rows[r]) == 0,
                  "sampler_device_row: %s", sr_error_get());
        if (gpu->ops->sample(gpu, dl, R, V, rows, ids) != 0) {
            CHECK(0, "sample: %s", sr_error_get());
            break;
        }
        for (int r = 0; r < R; r++) {
            memcpy(row, lg + (size_t)r * V, (size_t)V * sizeof *row);
            int32_t want = sampler_sample(&hs[r], row, hist_len ? hist + (size_t)r * hist_len : NULL,
                                          (size_t)hist_len);
            total++;
            if (ids[r] == want) {
                agree++;
            } else if (first_bad < 0) {
                first_bad = d * R + r;
                bad_got = ids[r];
                bad_want = want;
            }
        }
    }
    char what[200];
    snprintf(what, sizeof what, "V=%d rows=%d %s T=%g top_k=%d top_p=%g min_p=%g pen=%g hist=%d",
             V, R, kind_name(kind), (double)p->temperature, p->top_k, (double)p->top_p,
             (double)p->min_p, (double)p->repetition_penalty, hist_len);
    bool exact = p->temperature == 0.0f || kind == LG_SEPARATED || kind == LG_INF;
    if (exact) {
        CHECK(agree == total, "%s: %ld of %ld draws differ, first #%d: device %d, host %d", what,
              total - agree, total, first_bad, bad_got, bad_want);
    } else {
        g_agree += agree;
        g_total += total;
        CHECK(agree >= 0.999 * (double)total,
              "%s: %ld of %ld draws differ (more than 0.1%%), first #%d: device %d, host %d",
              what, total - agree, total, first_bad, bad_got, bad_want);
    }
    printf("  %-90s %ld/%ld equal\n", what, agree, total);
    for (int r = 0; r < R; r++) {
        sampler_free(&hs[r]);
        sampler_free(&ds[r]);
    }
    gpu->ops->free(gpu, dl);
    free(lg), free(row), free(hist), free(hs), free(ds), free(rows), free(ids);
}

static sr_sampling_params params(float t, int top_k, float top_p, float min_p, float pen,
                                 uint64_t seed)
{
    sr_sampling_params p;
    sampler_params_default(&p);
    p.temperature = t;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repetition_penalty = pen;
    p.seed = seed;
    return p;
}

/* Bad rows are refused with a message, not sampled. */
static void test_refusals(void)
{
    float *dl = gpu_poisoned(gpu, 16);
    sr_sample_row r = {.temperature = 1.0f, .top_p = 1.0f, .repetition_penalty = 1.0f, .u = 1.0};
    int32_t id;
    CHECK(gpu->ops->sample(gpu, dl, 1, 16, &r, &id) != 0, "u = 1 accepted");
    r.u = 0.5;
    r.top_p = 0.0f;
    CHECK(gpu->ops->sample(gpu, dl, 1, 16, &r, &id) != 0, "top_p = 0 accepted");
    CHECK(gpu->ops->sample(gpu, dl, 0, 16, &r, &id) == 0, "0 rows refused: %s", sr_error_get());
    gpu->ops->free(gpu, dl);
}

/* Time of one call at vocab 128256: the op (ids back) against downloading
 * the rows and sampling them with the host sampler. */
static void bench(int R, const sr_sampling_params *p, const char *label)
{
    const int V = 128256, iters = quick ? 3 : 30;
    float *lg = malloc((size_t)R * V * sizeof *lg);
    for (int r = 0; r < R; r++)
        fill_row(lg + (size_t)r * V, V, LG_LLM);
    float *src = gpu_put(gpu, lg, (size_t)R * V * sizeof *lg);
    float *dl = gpu->ops->alloc(gpu, (size_t)R * V * sizeof *lg);
    sr_sampler *s = calloc((size_t)R, sizeof *s);
    for (int r = 0; r < R; r++)
        sampler_init(&s[r], p, V);
    sr_sample_row *rows = calloc((size_t)R, sizeof *rows);
    int32_t *ids = malloc((size_t)R * sizeof *ids);
    double t_dev = 0, t_host = 0;
    for (int it = 0; it <= iters; it++) {
        /* a fresh copy each time: the op scales the logits in place */
        gpu->ops->copy(gpu, dl, src, (size_t)R * V * sizeof *lg);
        gpu->ops->sync(gpu);
        for (int r = 0; r < R; r++)
            sampler_device_row(&s[r], NULL, 0, &rows[r]);
        double t0 = sr_mono_s();
        CHECK(gpu->ops->sample(gpu, dl, R, V, rows, ids) == 0, "bench sample: %s",
              sr_error_get());
        double t1 = sr_mono_s();
        gpu->ops->download(gpu, lg, src, (size_t)R * V * sizeof *lg);
        for (int r = 0; r < R; r++)
            sampler_sample(&s[r], lg + (size_t)r * V, NULL, 0);
        double t2 = sr_mono_s();
        if (it > 0) { /* the first call warms up */
            t_dev += t1 - t0;
            t_host += t2 - t1;
        }
    }
    printf("bench sample V=%d batch %d %-28s: device %.1f us/step, download + host %.1f us/step\n",
           V, R, label, 1e6 * t_dev / iters, 1e6 * t_host / iters);
    for (int r = 0; r < R; r++)
        sampler_free(&s[r]);
    gpu->ops->free(gpu, src);
    gpu->ops->free(gpu, dl);
    free(lg), free(s), free(rows), free(ids);
}

int main(void)
{
    gpu = gpu_backend_or_skip("cuda_sample");
    quick = getenv("SR_TEST_QUICK") && atoi(getenv("SR_TEST_QUICK"));
    const char *seed = getenv("SR_TEST_SEED");
    gpu_seed(seed ? strtoull(seed, NULL, 10) : 20240607);
    if (!gpu->ops->sample) {
        CHECK(0, "the cuda backend has no sample op");
        return check_finish("cuda_sample");
    }
    test_refusals();

    const int vocabs[] = {64, 4099, 32000, 128256, 151936, 256000};
    const sr_sampling_params greedy = params(0.0f, 0, 1.0f, 0.0f, 1.0f, 1);
    const sr_sampling_params greedy_pen = params(0.0f, 0, 1.0f, 0.0f, 1.3f, 2);
    const sr_sampling_params cfgs[] = {
        params(1.0f, 0, 1.0f, 0.0f, 1.0f, 11),     /* plain softmax */
        params(0.7f, 0, 1.0f, 0.0f, 1.0f, 12),     /* temperature */
        params(1.0f, 40, 1.0f, 0.0f, 1.0f, 13),    /* top-k */
        params(0.9f, 0, 0.9f, 0.0f, 1.0f, 14),     /* top-p */
        params(0.8f, 0, 1.0f, 0.05f, 1.0f, 15),    /* min-p */
        params(1.1f, 100, 0.95f, 0.02f, 1.3f, 16), /* all of them, penalty too */
        params(0.6f, 1, 1.0f, 0.0f, 1.0f, 17),     /* top-k 1 */
        params(1.0f, 0, 1e-6f, 0.0f, 1.0f, 18),    /* tiny top-p */
        params(1.5f, 2000, 0.5f, 0.0f, 0.8f, 19),  /* penalty < 1, big k, half the mass */
    };
    const int ncfg = (int)(sizeof cfgs / sizeof cfgs[0]);
    const int draws = quick ? 2 : 24;

    printf("greedy (must be equal):\n");
    for (size_t v = 0; v < sizeof vocabs / sizeof vocabs[0]; v++) {
        int V = vocabs[v], R = V > 100000 ? 16 : 32;
        for (int k = LG_LLM; k <= LG_INF; k++) {
            run_case(V, R, (logit_kind)k, &greedy, 1, 0);
            run_case(V, R, (logit_kind)k, &greedy_pen, 1, 300);
        }
    }
    printf("sampling (>= 99.9%% equal; separated logits and +inf rows: all):\n");
    for (size_t v = 0; v < sizeof vocabs / sizeof vocabs[0]; v++) {
        int V = vocabs[v], R = V > 100000 ? 16 : 64;
        for (int c = 0; c < ncfg; c++) {
            int hl = cfgs[c].repetition_penalty != 1.0f ? 400 : 0;
            run_case(V, R, LG_LLM, &cfgs[c], draws, hl);
            run_case(V, R, LG_TIES, &cfgs[c], draws / 2 + 1, hl);
            if (V <= 32000) {
                run_case(V, R, LG_SEPARATED, &cfgs[c], draws, hl);
                run_case(V, R, LG_FLAT, &cfgs[c], draws / 2 + 1, hl);
                run_case(V, R, LG_SPECIAL, &cfgs[c], draws / 2 + 1, hl);
                run_case(V, R, LG_INF, &cfgs[c], 2, hl);
            }
        }
    }
    printf("sampled draws equal overall: %ld of %ld (%.5f%%)\n", g_agree, g_total,
           g_total ? 100.0 * (double)g_agree / (double)g_total : 100.0);

    const sr_sampling_params typical = params(0.8f, 50, 0.95f, 0.0f, 1.0f, 5);
    const sr_sampling_params nofilter = params(1.0f, 0, 1.0f, 0.0f, 1.0f, 6);
    const sr_sampling_params topp = params(1.0f, 0, 0.9f, 0.0f, 1.0f, 7);
    for (int b = 1; b <= 64; b *= 64) {
        bench(b, &greedy, "greedy");
        bench(b, &nofilter, "T=1");
        bench(b, &typical, "T=0.8 top_k=50 top_p=0.95");
        bench(b, &topp, "T=1 top_p=0.9");
    }
    backend_destroy(gpu);
    return check_finish("cuda_sample");
}
