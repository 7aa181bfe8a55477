/* Sampler tests: parameter checks, greedy, repetition penalty, each filter
 * against transformers' semantics, the seeded stream, draw statistics, and
 * the stop rules. Draws are seeded, so every run sees the same numbers; the
 * statistical bounds are there so that a wrong distribution fails. */
#include "engine/sampler.h"

#include "common/error.h"
#include "tests/check.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---- */

static sr_sampling_params params_sample(float temperature, uint64_t seed)
{
    sr_sampling_params p;
    sampler_params_default(&p);
    p.temperature = temperature;
    p.seed = seed;
    return p;
}

/* Draws n tokens from a fresh sampler over a copy of `logits` each time
 * (sampling modifies the row) and counts them. */
static void draw_counts(const sr_sampling_params *p, const float *logits, int V, int n,
                        long *counts)
{
    sr_sampler s;
    memset(counts, 0, (size_t)V * sizeof *counts);
    if (sampler_init(&s, p, V) != 0) {
        CHECK(0, "sampler_init: %s", sr_error_get());
        return;
    }
    float *row = malloc((size_t)V * sizeof *row);
    for (int i = 0; i < n; i++) {
        memcpy(row, logits, (size_t)V * sizeof *row);
        int32_t t = sampler_sample(&s, row, NULL, 0);
        if (t >= 0 && t < V)
            counts[t]++;
        else
            CHECK(0, "token %d out of range [0, %d)", t, V);
    }
    free(row);
    sampler_free(&s);
}

/* Every bin within 4 sigma of its binomial expectation; bins with p == 0
 * must be empty. */
static void check_freqs(const char *what, const long *counts, const double *prob, int V, int n)
{
    for (int i = 0; i < V; i++) {
        double e = n * prob[i];
        if (prob[i] == 0.0) {
            CHECK(counts[i] == 0, "%s: id %d drawn %ld times, expected never", what, i, counts[i]);
            continue;
        }
        double sigma = sqrt(n * prob[i] * (1.0 - prob[i]));
        CHECK(fabs((double)counts[i] - e) <= 4.0 * sigma + 1e-9,
              "%s: id %d drawn %ld times, expected %.1f +- %.1f", what, i, counts[i], e,
              4.0 * sigma);
    }
}

/* Deterministic test data: a 64-bit LCG and Box-Muller normals. */
static uint64_t lcg_state = 12345;
static double lcg_uniform(void)
{
    lcg_state = lcg_state * 6364136223846793005ull + 1442695040888963407ull;
    return ((double)(lcg_state >> 11) + 0.5) * 0x1.0p-53;
}
static double lcg_normal(void)
{
    double a = lcg_uniform(), b = lcg_uniform();
    return sqrt(-2.0 * log(a)) * cos(6.283185307179586 * b);
}

/* ---- parameter validation ---- */

static void expect_invalid(const sr_sampling_params *p, int V, const char *field)
{
    sr_error_clear();
    int rc = sampler_params_validate(p, V);
    CHECK(rc == -1, "%s: validate returned %d", field, rc);
    CHECK(strstr(sr_error_get(), field) != NULL, "%s: message '%s' does not name it", field,
          sr_error_get());
    sr_sampler s;
    CHECK(sampler_init(&s, p, V) == -1, "%s: sampler_init accepted it", field);
}

static void test_validate(void)
{
    sr_sampling_params p;
    sampler_params_default(&p);
    CHECK(p.temperature == 0.0f && p.top_k == 0 && p.top_p == 1.0f && p.min_p == 0.0f &&
              p.repetition_penalty == 1.0f && p.seed == 0,
          "defaults are not greedy/off");
    CHECK(sampler_params_validate(&p, 32000) == 0, "defaults rejected: %s", sr_error_get());

    sr_sampling_params ok = p;
    ok.temperature = 0.7f;
    ok.top_k = 200000; /* above the vocabulary: clamped like transformers */
    ok.top_p = 1.0f;
    ok.min_p = 1.0f;
    ok.repetition_penalty = 0.5f;
    CHECK(sampler_params_validate(&ok, 32000) == 0, "edge values rejected: %s", sr_error_get());
    ok.min_p = 0.0f;
    ok.top_p = 1e-6f;
    CHECK(sampler_params_validate(&ok, 32000) == 0, "tiny top_p rejected: %s", sr_error_get());

    const float bad_temp[] = {-0.1f, NAN, INFINITY};
    for (int i = 0; i < 3; i++) {
        sr_sampling_params q = p;
        q.temperature = bad_temp[i];
        expect_invalid(&q, 100, "temperature");
    }
    sr_error_clear();
    {
        sr_sampling_params q = p;
        q.temperature = NAN;
        sampler_params_validate(&q, 100);
        CHECK(strstr(sr_error_get(), ">= 0") && strstr(sr_error_get(), "nan"),
              "temperature message lacks the limit or the value: '%s'", sr_error_get());
    }
    {
        sr_sampling_params q = p;
        q.top_k = -1;
        expect_invalid(&q, 100, "top_k");
    }
    const float bad_top_p[] = {0.0f, -0.5f, 1.0001f, NAN};
    for (int i = 0; i < 4; i++) {
        sr_sampling_params q = p;
        q.top_p = bad_top_p[i];
        expect_invalid(&q, 100, "top_p");
    }
    const float bad_min_p[] = {-0.01f, 1.5f, NAN};
    for (int i = 0; i < 3; i++) {
        sr_sampling_params q = p;
        q.min_p = bad_min_p[i];
        expect_invalid(&q, 100, "min_p");
    }
    const float bad_pen[] = {0.0f, -1.0f, NAN, INFINITY};
    for (int i = 0; i < 4; i++) {
        sr_sampling_params q = p;
        q.repetition_penalty = bad_pen[i];
        expect_invalid(&q, 100, "repetition_penalty");
    }
    expect_invalid(&p, 0, "vocab_size");
}

/* ---- greedy ---- */

static int32_t greedy_of(float *row, int V)
{
    sr_sampling_params p;
    sampler_params_default(&p);
    sr_sampler s;
    if (sampler_init(&s, &p, V) != 0)
        return -100;
    int32_t t = sampler_sample(&s, row, NULL, 0);
    sampler_free(&s);
    return t;
}

static void test_greedy(void)
{
    float a[] = {0.5f, 2.0f, -1.0f, 1.5f};
    CHECK(greedy_of(a, 4) == 1, "argmax of plain row");
    float ties[] = {1.0f, 5.0f, 3.0f, 5.0f, 5.0f};
    CHECK(greedy_of(ties, 5) == 1, "ties must go to the lowest id, got %d", greedy_of(ties, 5));
    float nan_first[] = {NAN, -3.0f, NAN, -2.0f, NAN};
    int32_t t = greedy_of(nan_first, 5);
    CHECK(t == 3, "NaN must never be chosen, got %d", t);
    float nan_last[] = {-3.0f, NAN};
    CHECK(greedy_of(nan_last, 2) == 0, "NaN after the max must not win");
    float all_nan[] = {NAN, NAN, NAN};
    CHECK(greedy_of(all_nan, 3) == 0, "all-NaN row gives id 0");
    float all_ninf[] = {-INFINITY, -INFINITY};
    CHECK(greedy_of(all_ninf, 2) == 0, "all -inf row gives id 0");
    float one_finite[] = {-INFINITY, NAN, -INFINITY, -1e30f};
    CHECK(greedy_of(one_finite, 4) == 3, "only finite logit must win");
    float pinf[] = {1.0f, INFINITY, INFINITY};
    CHECK(greedy_of(pinf, 3) == 1, "+inf wins, lowest id on ties");

    /* greedy ignores the sampling filters */
    sr_sampling_params p;
    sampler_params_default(&p);
    p.top_k = 1;
    p.top_p = 0.1f;
    p.min_p = 0.9f;
    sr_sampler s;
    CHECK(sampler_init(&s, &p, 4) == 0, "init");
    float b[] = {0.1f, 0.2f, 0.9f, 0.3f};
    CHECK(sampler_sample(&s, b, NULL, 0) == 2, "greedy with filters set");
    CHECK(b[2] == 0.9f, "greedy must not scale logits");
    sampler_free(&s);
}

/* ---- repetition penalty ---- */

static void test_repetition_penalty(void)
{
    sr_sampling_params p;
    sampler_params_default(&p);
    p.repetition_penalty = 2.0f;
    sr_sampler s;
    CHECK(sampler_init(&s, &p, 6) == 0, "init");
    float row[] = {2.0f, -2.0f, 3.0f, 0.0f, 1.5f, -0.5f};
    /* id 0 three times (penalised once), ids out of range ignored */
    int32_t hist[] = {0, 1, 0, 3, 5, -1, 6, 1000, 0};
    int32_t t = sampler_sample(&s, row, hist, sizeof hist / sizeof hist[0]);
    CHECK(row[0] == 1.0f, "positive logit divided once: got %g, want 1", (double)row[0]);
    CHECK(row[1] == -4.0f, "negative logit multiplied: got %g, want -4", (double)row[1]);
    CHECK(row[2] == 3.0f, "unseen id unchanged: got %g", (double)row[2]);
    CHECK(row[3] == 0.0f, "zero stays zero: got %g", (double)row[3]);
    CHECK(row[4] == 1.5f, "unseen id unchanged: got %g", (double)row[4]);
    CHECK(row[5] == -1.0f, "negative logit multiplied: got %g, want -1", (double)row[5]);
    CHECK(t == 2, "greedy after penalty: got %d, want 2", t);
    sampler_free(&s);

    /* the penalty changes the argmax */
    CHECK(sampler_init(&s, &p, 3) == 0, "init");
    float r2[] = {3.0f, 2.0f, -5.0f};
    int32_t h2[] = {0};
    t = sampler_sample(&s, r2, h2, 1);
    CHECK(t == 1 && r2[0] == 1.5f, "penalised leader: got id %d, logit %g", t, (double)r2[0]);
    sampler_free(&s);

    /* penalty < 1 rewards, same formula */
    p.repetition_penalty = 0.5f;
    CHECK(sampler_init(&s, &p, 3) == 0, "init");
    float r3[] = {1.0f, 1.2f, -1.0f};
    int32_t h3[] = {0, 2};
    t = sampler_sample(&s, r3, h3, 2);
    CHECK(r3[0] == 2.0f && r3[2] == -0.5f && t == 0, "penalty 0.5: got %g %g, id %d",
          (double)r3[0], (double)r3[2], t);
    /* NULL history with n == 0 is allowed */
    float r4[] = {0.0f, 1.0f, -1.0f};
    CHECK(sampler_sample(&s, r4, NULL, 0) == 1 && r4[1] == 1.0f, "no history");
    sampler_free(&s);

    /* the penalty also applies before temperature when sampling */
    sr_sampling_params q = params_sample(2.0f, 7);
    q.repetition_penalty = 4.0f;
    CHECK(sampler_init(&s, &q, 2) == 0, "init");
    float r5[] = {8.0f, -8.0f};
    int32_t h5[] = {0, 1};
    sampler_sample(&s, r5, h5, 2);
    CHECK(r5[0] == 1.0f && r5[1] == -16.0f, "penalty then temperature: got %g %g",
          (double)r5[0], (double)r5[1]);
    sampler_free(&s);
}

/* ---- filters that reduce to greedy ---- */

static void test_reduce_to_greedy(void)
{
    enum { V = 5000 };
    float *base = malloc(V * sizeof *base), *row = malloc(V * sizeof *row);
    for (int trial = 0; trial < 20; trial++) {
        for (int i = 0; i < V; i++)
            base[i] = (float)(3.0 * lcg_normal());
        memcpy(row, base, sizeof(float) * V);
        int32_t want = greedy_of(row, V);

        /* top_k = 1, several seeds and temperatures */
        for (uint64_t seed = 0; seed < 8; seed++) {
            sr_sampling_params p = params_sample(seed % 2 ? 1.0f : 2.5f, seed * 7919 + trial);
            p.top_k = 1;
            sr_sampler s;
            sampler_init(&s, &p, V);
            for (int k = 0; k < 4; k++) {
                memcpy(row, base, sizeof(float) * V);
                int32_t t = sampler_sample(&s, row, NULL, 0);
                CHECK(t == want, "top_k=1 gave %d, greedy %d (seed %llu)", t, want,
                      (unsigned long long)seed);
            }
            sampler_free(&s);

            /* tiny top_p keeps only the best token */
            p.top_k = 0;
            p.top_p = 1e-6f;
            sampler_init(&s, &p, V);
            for (int k = 0; k < 4; k++) {
                memcpy(row, base, sizeof(float) * V);
                int32_t t = sampler_sample(&s, row, NULL, 0);
                CHECK(t == want, "top_p=1e-6 gave %d, greedy %d", t, want);
            }
            sampler_free(&s);

            /* min_p = 1 keeps only the maximum */
            p.top_p = 1.0f;
            p.min_p = 1.0f;
            sampler_init(&s, &p, V);
            for (int k = 0; k < 4; k++) {
                memcpy(row, base, sizeof(float) * V);
                int32_t t = sampler_sample(&s, row, NULL, 0);
                CHECK(t == want, "min_p=1 gave %d, greedy %d", t, want);
            }
            sampler_free(&s);
        }
    }
    free(base);
    free(row);

    /* With ties at the top, top-k=1 and min_p=1 keep all the tied tokens (as
     * transformers does) and draw among them evenly; tiny top_p keeps only
     * the lowest id of the tie. */
    float tied[] = {1.0f, 4.0f, 0.5f, 4.0f, -2.0f};
    double half[] = {0, 0.5, 0, 0.5, 0};
    double first[] = {0, 1, 0, 0, 0};
    long counts[5];
    sr_sampling_params p = params_sample(1.0f, 99);
    p.top_k = 1;
    draw_counts(&p, tied, 5, 4000, counts);
    check_freqs("top_k=1 with tie", counts, half, 5, 4000);
    p.top_k = 0;
    p.min_p = 1.0f;
    draw_counts(&p, tied, 5, 4000, counts);
    check_freqs("min_p=1 with tie", counts, half, 5, 4000);
    p.min_p = 0.0f;
    p.top_p = 0.01f;
    draw_counts(&p, tied, 5, 4000, counts);
    check_freqs("top_p tiny with tie", counts, first, 5, 4000);
}

/* ---- the random stream ---- */

static void test_seeding(void)
{
    sr_sampling_params p = params_sample(1.0f, 42);
    sr_sampler a, b, c;
    sampler_init(&a, &p, 8);
    sampler_init(&b, &p, 8);
    p.seed = 43;
    sampler_init(&c, &p, 8);
    int same_ab = 1, same_ac = 1, in_range = 1;
    for (int i = 0; i < 1000; i++) {
        double x = sampler_next_uniform(&a), y = sampler_next_uniform(&b),
               z = sampler_next_uniform(&c);
        same_ab &= x == y;
        same_ac &= x == z;
        in_range &= x >= 0.0 && x < 1.0 && z >= 0.0 && z < 1.0;
    }
    CHECK(same_ab, "same seed must give the same stream");
    CHECK(!same_ac, "seeds 42 and 43 gave the same stream");
    CHECK(in_range, "uniforms outside [0, 1)");
    sampler_free(&a);
    sampler_free(&b);
    sampler_free(&c);

    /* Pin the stream (xoshiro256** seeded by splitmix64): a change would
     * change every seeded generation users may have recorded. Seed 0's
     * splitmix64 outputs are the published reference values. */
    p.seed = 0;
    sampler_init(&a, &p, 8);
    CHECK(a.rng[0] == 0xe220a8397b1dcdafull && a.rng[1] == 0x6e789e6aa1b965f4ull &&
              a.rng[2] == 0x06c45d188009454full && a.rng[3] == 0xf88bb8a8724c81ecull,
          "splitmix64(0) state %016llx %016llx %016llx %016llx", (unsigned long long)a.rng[0],
          (unsigned long long)a.rng[1], (unsigned long long)a.rng[2],
          (unsigned long long)a.rng[3]);
    double u0 = sampler_next_uniform(&a);
    double u1 = sampler_next_uniform(&a);
    /* first two outputs, from an independent big-integer implementation */
    CHECK(u0 == 0x1.33d8be6d96ebep-1 && u1 == 0x1.7edc3ef092ac8p-1,
          "seed 0 uniforms %.17g %.17g, want 0.6012629994179048 0.7477740925472398", u0, u1);
    sampler_free(&a);

    /* token sequences: same seed same tokens, different seed differs */
    enum { V = 64, N = 300 };
    float base[V], row[V];
    for (int i = 0; i < V; i++)
        base[i] = (float)lcg_normal();
    int32_t seq[3][N];
    uint64_t seeds[3] = {5, 5, 6};
    for (int r = 0; r < 3; r++) {
        sr_sampling_params q = params_sample(1.3f, seeds[r]);
        q.top_k = 40;
        q.top_p = 0.95f;
        sr_sampler s;
        sampler_init(&s, &q, V);
        for (int i = 0; i < N; i++) {
            memcpy(row, base, sizeof row);
            seq[r][i] = sampler_sample(&s, row, seq[r], (size_t)i);
        }
        sampler_free(&s);
    }
    CHECK(memcmp(seq[0], seq[1], sizeof seq[0]) == 0, "same seed gave different tokens");
    CHECK(memcmp(seq[0], seq[2], sizeof seq[0]) != 0, "seeds 5 and 6 gave the same tokens");
}

/* ---- draw statistics on a known distribution ---- */

static void test_statistics(void)
{
    enum { V = 4, N = 20000 };
    const double pr[V] = {0.5, 0.3, 0.15, 0.05};
    float lg[V];
    for (int i = 0; i < V; i++)
        lg[i] = (float)log(pr[i]);
    long counts[V];

    sr_sampling_params p = params_sample(1.0f, 2024);
    draw_counts(&p, lg, V, N, counts);
    check_freqs("temperature 1", counts, pr, V, N);
    /* chi-square with 3 degrees of freedom: P(chi2 > 16.27) = 0.001 */
    double chi2 = 0;
    for (int i = 0; i < V; i++)
        chi2 += (counts[i] - N * pr[i]) * (counts[i] - N * pr[i]) / (N * pr[i]);
    CHECK(chi2 < 16.27, "chi-square %.2f over 3 dof", chi2);

    /* shifting every logit changes nothing */
    float shifted[V];
    for (int i = 0; i < V; i++)
        shifted[i] = lg[i] + 50.0f;
    p.seed = 77;
    draw_counts(&p, shifted, V, N, counts);
    check_freqs("shifted logits", counts, pr, V, N);

    /* top_k = 2: ids 0 and 1 renormalised, 0.625 / 0.375 */
    const double k2[V] = {0.625, 0.375, 0, 0};
    p = params_sample(1.0f, 3);
    p.top_k = 2;
    draw_counts(&p, lg, V, N, counts);
    check_freqs("top_k=2", counts, k2, V, N);

    /* top_p: ascending cumulative sums are 0.05, 0.20, 0.50, 1.00 and
     * tokens with a sum <= 1 - top_p go. top_p = 0.75 removes the first two
     * (<= 0.25), keeping ids 0 and 1. (top_p = 0.8 would sit on the
     * boundary: 0.20 <= 0.2 is decided by rounding, in transformers too.) */
    p = params_sample(1.0f, 4);
    p.top_p = 0.75f;
    draw_counts(&p, lg, V, N, counts);
    check_freqs("top_p=0.75", counts, k2, V, N);
    /* top_p = 0.9: only 0.05 <= 0.1 goes */
    const double p90[V] = {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0};
    p.top_p = 0.9f;
    draw_counts(&p, lg, V, N, counts);
    check_freqs("top_p=0.9", counts, p90, V, N);
    /* top_p = 0.4: 0.05, 0.20 and 0.50 are <= 0.6; only id 0 stays */
    const double p40[V] = {1, 0, 0, 0};
    p.top_p = 0.4f;
    draw_counts(&p, lg, V, N, counts);
    check_freqs("top_p=0.4", counts, p40, V, N);

    /* min_p = 0.5: keep prob >= 0.25 -> ids 0, 1 */
    p = params_sample(1.0f, 5);
    p.min_p = 0.5f;
    draw_counts(&p, lg, V, N, counts);
    check_freqs("min_p=0.5", counts, k2, V, N);
    /* min_p = 0.2: keep prob >= 0.1 -> ids 0, 1, 2 */
    const double m20[V] = {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0};
    p.min_p = 0.2f;
    draw_counts(&p, lg, V, N, counts);
    check_freqs("min_p=0.2", counts, m20, V, N);

    /* temperature 0.5 squares the probabilities before renormalising */
    double sq[V], zs = 0;
    for (int i = 0; i < V; i++)
        zs += pr[i] * pr[i];
    for (int i = 0; i < V; i++)
        sq[i] = pr[i] * pr[i] / zs;
    p = params_sample(0.5f, 6);
    draw_counts(&p, lg, V, N, counts);
    check_freqs("temperature 0.5", counts, sq, V, N);
    /* temperature 2 takes square roots */
    double rt[V];
    zs = 0;
    for (int i = 0; i < V; i++)
        zs += sqrt(pr[i]);
    for (int i = 0; i < V; i++)
        rt[i] = sqrt(pr[i]) / zs;
    p = params_sample(2.0f, 8);
    draw_counts(&p, lg, V, N, counts);
    check_freqs("temperature 2", counts, rt, V, N);

    /* filters after temperature: at T = 0.5 the probabilities are
     * .685 .247 .062 .007, so min_p = 0.1 (>= .0685) drops ids 2 and 3 */
    const double t_m[V] = {sq[0] / (sq[0] + sq[1]), sq[1] / (sq[0] + sq[1]), 0, 0};
    p.temperature = 0.5f;
    p.min_p = 0.1f;
    draw_counts(&p, lg, V, N, counts);
    check_freqs("temperature 0.5 + min_p 0.1", counts, t_m, V, N);

    /* NaN and -inf logits carry no mass when sampling */
    float odd[6] = {NAN, 0.0f, -INFINITY, 0.0f, NAN, (float)log(2.0)};
    const double odd_p[6] = {0, 0.25, 0, 0.25, 0, 0.5};
    long c6[6];
    p = params_sample(1.0f, 9);
    draw_counts(&p, odd, 6, N, c6);
    check_freqs("NaN/-inf row", c6, odd_p, 6, N);
    float dead[3] = {NAN, -INFINITY, NAN};
    draw_counts(&p, dead, 3, 10, c6);
    CHECK(c6[0] == 10, "fully masked row must give id 0 when sampling");
    /* +inf after scaling: the +inf tokens share the mass */
    float huge[4] = {3e38f, 1.0f, 3e38f, 2e36f}; /* 2e36 / 0.01 stays finite */
    const double huge_p[4] = {0.5, 0, 0.5, 0};
    p.temperature = 0.01f;
    draw_counts(&p, huge, 4, 4000, c6);
    check_freqs("+inf after temperature", c6, huge_p, 4, 4000);
}

/* ---- large vocabulary against a direct implementation ---- */

typedef struct {
    float v;
    int32_t id;
} ref_pair;

static int ref_cmp_asc(const void *a, const void *b)
{
    const ref_pair *x = a, *y = b;
    if (x->v != y->v)
        return x->v < y->v ? -1 : 1;
    return x->id > y->id ? -1 : 1; /* ascending: higher id first among equals */
}

/* transformers' pipeline written out plainly: full sorts, double softmax.
 * Fills prob[] (0 for removed tokens). */
static void ref_probs(const float *logits, int V, const sr_sampling_params *p, double *prob)
{
    ref_pair *a = malloc((size_t)V * sizeof *a);
    float *l = malloc((size_t)V * sizeof *l);
    for (int i = 0; i < V; i++)
        l[i] = logits[i] / p->temperature;
    char *keep = malloc((size_t)V);
    for (int i = 0; i < V; i++) {
        keep[i] = 1;
        a[i].v = l[i];
        a[i].id = i;
    }
    qsort(a, (size_t)V, sizeof *a, ref_cmp_asc);
    if (p->top_k > 0 && p->top_k < V) {
        float vk = a[V - p->top_k].v;
        for (int i = 0; i < V; i++)
            if (l[i] < vk)
                keep[i] = 0;
    }
    double mx = a[V - 1].v;
    if (p->top_p < 1.0f) {
        double z = 0;
        for (int i = 0; i < V; i++)
            if (keep[i])
                z += exp(l[i] - mx);
        double cum = 0;
        for (int j = 0; j < V - 1; j++) {
            int id = a[j].id;
            if (!keep[id])
                continue;
            cum += exp(l[id] - mx) / z;
            if (cum <= 1.0 - (double)p->top_p)
                keep[id] = 0;
        }
    }
    if (p->min_p > 0.0f)
        for (int i = 0; i < V; i++)
            if (exp(l[i] - mx) < p->min_p)
                keep[i] = 0;
    double z = 0;
    for (int i = 0; i < V; i++)
        z += keep[i] ? exp(l[i] - mx) : 0.0;
    for (int i = 0; i < V; i++)
        prob[i] = keep[i] ? exp(l[i] - mx) / z : 0.0;
    free(a);
    free(l);
    free(keep);
}

/* Sets the sampler's stream so that its next uniform is exactly u. A
 * xoshiro256** output depends only on state word 1, through
 * rotl(s1 * 5, 7) * 9, which inverts with the inverses of 5 and 9 mod 2^64. */
static uint64_t inverse_mod64(uint64_t a)
{
    uint64_t x = a; /* right to 3 bits for odd a; each step doubles that */
    for (int i = 0; i < 5; i++)
        x *= 2 - a * x;
    return x;
}

static void force_next_uniform(sr_sampler *s, double u)
{
    uint64_t out = (uint64_t)(u * 0x1.0p53) << 11;
    uint64_t r = out * inverse_mod64(9);
    r = (r >> 7) | (r << 57);
    s->rng[1] = r * inverse_mod64(5);
}

/* Compares sampler draws with the reference: no token outside the kept set,
 * including for uniforms forced next to 0 and 1, where an inverse CDF lands
 * on its first and last tokens; with `grid` > 0 the exact share of each
 * token under the inverse CDF; and with `groups` > 0, the kept mass split
 * into groups (in the reference's rank order, the least likely tokens first)
 * drawn at the right rates, so a nucleus cut too early or too late shows. */
static void check_against_ref(const char *what, const float *logits, int V,
                              const sr_sampling_params *p, int n, int groups, int grid)
{
    double *prob = malloc((size_t)V * sizeof *prob);
    long *counts = malloc((size_t)V * sizeof *counts);
    float *row = malloc((size_t)V * sizeof *row);
    ref_probs(logits, V, p, prob);
    draw_counts(p, logits, V, n, counts);

    sr_sampler s;
    sampler_init(&s, p, V);
    const double edges[] = {0.0, 0x1.0p-30, 0.5, 1.0 - 0x1.0p-30, 1.0 - 0x1.0p-53};
    for (size_t e = 0; e < sizeof edges / sizeof edges[0]; e++) {
        force_next_uniform(&s, edges[e]);
        sr_sampler probe = s;
        double got = sampler_next_uniform(&probe);
        CHECK(got == edges[e], "forcing u = %.17g gave %.17g", edges[e], got);
        memcpy(row, logits, (size_t)V * sizeof *row);
        int32_t t = sampler_sample(&s, row, NULL, 0);
        CHECK(t >= 0 && t < V && prob[t] > 0, "%s: u = %.17g drew removed token %d", what,
              edges[e], t);
    }

    /* The inverse CDF swept over a grid of uniforms: whatever order it puts
     * the tokens in, each one's interval holds N * prob +- 1 grid points. */
    if (grid > 0) {
        long *gcount = calloc((size_t)V, sizeof *gcount);
        for (int i = 0; i < grid; i++) {
            force_next_uniform(&s, (i + 0.5) / grid);
            memcpy(row, logits, (size_t)V * sizeof *row);
            int32_t t = sampler_sample(&s, row, NULL, 0);
            if (t >= 0 && t < V)
                gcount[t]++;
        }
        int bad = 0, first_bad = -1;
        for (int i = 0; i < V; i++)
            if (fabs((double)gcount[i] - grid * prob[i]) > 1.5 && bad++ == 0)
                first_bad = i;
        CHECK(bad == 0, "%s: %d tokens off on a %d-point grid, e.g. id %d: %ld points, want %.2f",
              what, bad, grid, first_bad, first_bad >= 0 ? gcount[first_bad] : 0,
              first_bad >= 0 ? grid * prob[first_bad] : 0.0);
        free(gcount);
    }
    sampler_free(&s);

    ref_pair *order = malloc((size_t)V * sizeof *order);
    int kept = 0;
    long outside = 0;
    for (int i = 0; i < V; i++) {
        if (prob[i] > 0) {
            order[kept].v = (float)prob[i];
            order[kept].id = i;
            kept++;
        } else {
            outside += counts[i];
        }
    }
    CHECK(outside == 0, "%s: %ld draws outside the %d kept tokens", what, outside, kept);
    if (groups > 0) {
        qsort(order, (size_t)kept, sizeof *order, ref_cmp_asc);
        double *gp = calloc((size_t)groups, sizeof *gp);
        long *gc = calloc((size_t)groups, sizeof *gc);
        double cum = 0;
        for (int j = 0; j < kept; j++) {
            int id = order[j].id;
            int g = (int)(cum * groups);
            if (g >= groups)
                g = groups - 1;
            gp[g] += prob[id];
            gc[g] += counts[id];
            cum += prob[id];
        }
        check_freqs(what, gc, gp, groups, n);
        free(gp);
        free(gc);
    }
    free(order);
    free(prob);
    free(counts);
    free(row);
}

/* The filters on LLM-sized rows: a broad normal body plus a few strong
 * candidates. Full statistics on an 8K row, where draws are cheap; on the
 * 152K row the kept set at its edges and a rough distribution. */
static void run_ref_configs(const float *lg, int V, int n, int groups, int grid)
{
    char what[96];
    struct {
        float t;
        int k;
        float top_p, min_p;
    } cfg[] = {
        {1.0f, 50, 0.9f, 0.05f}, /* typical chat settings */
        {0.8f, 0, 0.95f, 0.0f},
        {1.5f, 0, 0.5f, 0.0f}, /* flat: the nucleus spans many tokens */
        {1.0f, 1000, 0.7f, 0.0f},
        {1.0f, 0, 1.0f, 0.0f}, /* no filters */
        {1.0f, 0, 1.0f, 0.001f},
        {0.7f, 20, 1.0f, 0.0f},
    };
    for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
        sr_sampling_params p = params_sample(cfg[c].t, 100 + c);
        p.top_k = cfg[c].k;
        p.top_p = cfg[c].top_p;
        p.min_p = cfg[c].min_p;
        snprintf(what, sizeof what, "V=%d T %g top_k %d top_p %g min_p %g", V,
                 (double)p.temperature, p.top_k, (double)p.top_p, (double)p.min_p);
        check_against_ref(what, lg, V, &p, n, groups, grid);
    }
}

static void test_large_vocab(void)
{
    enum { V = 152064 };
    float *lg = malloc(V * sizeof *lg);
    for (int i = 0; i < V; i++)
        lg[i] = (float)(2.0 * lcg_normal());
    for (int i = 0; i < 12; i++)
        lg[(i * 7919 + 13) % V] = (float)(9.0 + 0.5 * i);
    run_ref_configs(lg, V, 100, 0, 200);
    run_ref_configs(lg, 8192, 2000, 5, 4000);
    /* Two buckets of two tokens each: the grid pins the walk inside a
     * bucket as well as across buckets. */
    const float two[4] = {(float)log(0.3), (float)log(0.2), (float)log(0.3), (float)log(0.2)};
    sr_sampling_params p = params_sample(1.0f, 1);
    check_against_ref("2 x 2 tokens", two, 4, &p, 1000, 0, 100000);
    const float quarter[4] = {(float)log(0.5), (float)log(0.3), (float)log(0.15),
                              (float)log(0.05)};
    p.top_k = 3;
    check_against_ref("4 tokens top_k 3", quarter, 4, &p, 1000, 0, 100000);
    free(lg);
}

/* ---- stop rules ---- */

static void test_stop_rules(void)
{
    char *strs[] = {"world", "", "lo w", "xyz"};
    int32_t ids[] = {2, 128001};
    sr_stop_rules r = {ids, 2, strs, 4, 100};

    const char *t = "hello world";
    CHECK(stop_rules_find_string(&r, t, strlen(t)) == 3, "earliest is 'lo w' at 3, got %ld",
          stop_rules_find_string(&r, t, strlen(t)));
    t = "say hi";
    CHECK(stop_rules_find_string(&r, t, strlen(t)) == -1, "no stop string, got %ld",
          stop_rules_find_string(&r, t, strlen(t)));
    /* only `len` bytes count */
    t = "hello world";
    CHECK(stop_rules_find_string(&r, t, 5) == -1, "stop beyond len must not count");
    CHECK(stop_rules_find_string(&r, t, 7) == 3, "'lo w' inside the first 7 bytes");
    t = "xyz then world";
    CHECK(stop_rules_find_string(&r, t, strlen(t)) == 0, "stop at offset 0");
    t = "a world lo w";
    CHECK(stop_rules_find_string(&r, t, strlen(t)) == 2, "earlier occurrence of a later rule");
    char *only_empty[] = {""};
    sr_stop_rules e = {NULL, 0, only_empty, 1, 10};
    CHECK(stop_rules_find_string(&e, "abc", 3) == -1, "empty stop strings are ignored");

    CHECK(stop_rules_is_stop_id(&r, 2) && stop_rules_is_stop_id(&r, 128001), "stop ids");
    CHECK(!stop_rules_is_stop_id(&r, 3) && !stop_rules_is_stop_id(&e, 2), "non-stop ids");

    char *hs[] = {"</s>", "abab", "Q"};
    sr_stop_rules h = {NULL, 0, hs, 3, 10};
    struct {
        const char *text;
        size_t want;
    } cases[] = {
        {"hello </", 2}, {"hello <", 1},  {"hello </s", 3}, {"hello", 0},
        {"xaba", 3},     {"xab", 2},      {"aba ", 0},      {"</s>", 0},
        {"Q", 0},        {"", 0},         {"<", 1},         {"abab", 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t got = stop_rules_holdback(&h, cases[i].text, strlen(cases[i].text));
        CHECK(got == cases[i].want, "holdback('%s') = %zu, want %zu", cases[i].text, got,
              cases[i].want);
    }
}

int main(void)
{
    test_validate();
    test_greedy();
    test_repetition_penalty();
    test_reduce_to_greedy();
    test_seeding();
    test_statistics();
    test_large_vocab();
    test_stop_rules();
    return check_finish("sampler");
}
