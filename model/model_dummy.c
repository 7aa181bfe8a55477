/* --load-format dummy: random weights of the right shapes for any config,
 * so benchmarks need only a config.json. One anonymous mapping holds every
 * tensor; it is filled by a few threads. Each fixed-size chunk of each
 * tensor has its own PRNG stream derived from (seed, tensor, chunk), so
 * the bytes depend on the seed only, never on the thread count. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"
#include "model/model.h"
#include "model/model_internal.h"

#define SR_DUMMY_CHUNK ((size_t)1 << 20) /* elements per PRNG stream */
#define SR_DUMMY_ALIGN ((size_t)256)     /* tensor start alignment in bytes */
#define SR_DUMMY_MAX_THREADS 16

typedef enum { DUMMY_MATRIX, DUMMY_NORM, DUMMY_BIAS } sr_dummy_kind;

typedef struct {
    sr_weight *w;
    sr_dummy_kind kind;
    size_t offset;     /* bytes into the buffer */
    size_t n;          /* elements */
    size_t first_item; /* index of its first chunk among all chunks */
} sr_dummy_tensor;

typedef struct {
    sr_dummy_tensor *t;
    size_t n_t;
    size_t n_items;
    unsigned char *buf;
    sr_dtype dtype;
    uint64_t seed;
    atomic_size_t next_item;
    atomic_size_t done_items;
} sr_dummy_job;

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* xoshiro256+ : fast, and its weak low bits are not used (we take the top
 * 24 bits of each half-word pair below). */
typedef struct {
    uint64_t s[4];
} sr_xoshiro;

static uint64_t rotl64(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(sr_xoshiro *r)
{
    uint64_t *s = r->s;
    uint64_t result = s[0] + s[3];
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl64(s[3], 45);
    return result;
}

static void xoshiro_seed(sr_xoshiro *r, uint64_t seed, uint64_t tensor, uint64_t chunk)
{
    uint64_t sm = seed;
    uint64_t a = splitmix64(&sm);
    sm = a ^ (tensor * 0xd1b54a32d192ed03ull);
    uint64_t b = splitmix64(&sm);
    sm = b ^ (chunk * 0x8cb92ba72f3d8dd7ull);
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&sm);
}

static void dummy_store(unsigned char *dst, sr_dtype dt, size_t i, float v)
{
    switch (dt) {
    case SR_DTYPE_F32:
        memcpy(dst + 4 * i, &v, 4);
        break;
    case SR_DTYPE_F16: {
        uint16_t h = sr_f32_to_f16(v);
        memcpy(dst + 2 * i, &h, 2);
        break;
    }
    case SR_DTYPE_BF16: {
        uint16_t h = sr_f32_to_bf16(v);
        memcpy(dst + 2 * i, &h, 2);
        break;
    }
    }
}

static void dummy_fill_item(sr_dummy_job *job, size_t item)
{
    /* the tensor holding this chunk: last with first_item <= item */
    size_t lo = 0, hi = job->n_t;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (job->t[mid].first_item <= item)
            lo = mid;
        else
            hi = mid;
    }
    const sr_dummy_tensor *t = &job->t[lo];
    size_t chunk = item - t->first_item;
    size_t begin = chunk * SR_DUMMY_CHUNK;
    size_t end = begin + SR_DUMMY_CHUNK < t->n ? begin + SR_DUMMY_CHUNK : t->n;
    /* Uniform [-a, a] has std a/sqrt(3). Matrices get std 1/sqrt(fan_in)
     * so each projection keeps activations at unit scale; norms sit near
     * 1 and biases near 0, as in a trained model. */
    float center = 0, a;
    switch (t->kind) {
    case DUMMY_MATRIX:
        a = (float)sqrt(3.0 / (double)t->w->cols);
        break;
    case DUMMY_NORM:
        center = 1.0f;
        a = 0.05f;
        break;
    default:
        a = 0.02f * 1.7320508f;
        break;
    }
    sr_xoshiro r;
    xoshiro_seed(&r, job->seed, lo, chunk);
    unsigned char *dst = job->buf + t->offset;
    for (size_t i = begin; i < end; i += 2) {
        uint64_t x = xoshiro_next(&r);
        /* two 24-bit uniforms in [0,1) per draw, mapped to [-1, 1) */
        float u0 = (float)(x >> 40) * 0x1p-23f - 1.0f;
        float u1 = (float)((x >> 8) & 0xffffff) * 0x1p-23f - 1.0f;
        dummy_store(dst, job->dtype, i, center + a * u0);
        if (i + 1 < end)
            dummy_store(dst, job->dtype, i + 1, center + a * u1);
    }
}

/* Worker loop; the calling (main) thread also logs progress, since only it
 * may write log lines while others run. */
static void dummy_work(sr_dummy_job *job, bool log_progress)
{
    /* a line per 10% once the fill has run for a second; small models
     * finish silently */
    double start = sr_mono_s();
    int next_tenth = 1;
    for (;;) {
        size_t item = atomic_fetch_add(&job->next_item, 1);
        if (item >= job->n_items)
            break;
        dummy_fill_item(job, item);
        size_t done = atomic_fetch_add(&job->done_items, 1) + 1;
        if (log_progress && done * 10 >= (size_t)next_tenth * job->n_items) {
            double t = sr_mono_s() - start;
            if (t >= 1.0)
                sr_log(SR_LOG_INFO, "dummy weights: %zu%% filled (%.1f s)",
                       done * 100 / job->n_items, t);
            while (done * 10 >= (size_t)next_tenth * job->n_items)
                next_tenth++;
        }
    }
}

static void *dummy_thread(void *arg)
{
    dummy_work(arg, false);
    return NULL;
}

static int dummy_add(sr_dummy_tensor *list, size_t *n, size_t *bytes, size_t *items,
                     sr_weight *w, int64_t rows, int64_t cols, sr_dummy_kind kind,
                     size_t esize)
{
    w->rows = rows;
    w->cols = cols;
    size_t count = (size_t)rows * (size_t)cols; /* both <= INT_MAX: fits */
    size_t off = (*bytes + SR_DUMMY_ALIGN - 1) & ~(SR_DUMMY_ALIGN - 1);
    if (off < *bytes || count > (SIZE_MAX - off) / esize)
        return sr_error_set("total weight size overflows");
    list[*n] = (sr_dummy_tensor){.w = w, .kind = kind, .offset = off, .n = count,
                                 .first_item = *items};
    *bytes = off + count * esize;
    *items += (count + SR_DUMMY_CHUNK - 1) / SR_DUMMY_CHUNK;
    (*n)++;
    return 0;
}

int model_dummy_build(sr_model *m, uint64_t seed, sr_dtype dtype)
{
    const sr_model_config *cfg = &m->cfg;
    if (dtype != SR_DTYPE_F32 && dtype != SR_DTYPE_F16 && dtype != SR_DTYPE_BF16)
        return sr_error_set("unknown dtype %d", (int)dtype);
    size_t esize = sr_dtype_size(dtype);
    m->storage = calloc(1, sizeof *m->storage);
    m->layers = calloc((size_t)cfg->n_layers, sizeof *m->layers);
    size_t max_t = 3 + (size_t)cfg->n_layers * 16;
    sr_dummy_tensor *list = calloc(max_t, sizeof *list);
    if (!m->storage || !m->layers || !list) {
        free(list);
        return sr_error_set("out of memory");
    }
    int64_t hidden = cfg->hidden_size, inter = cfg->intermediate_size;
    int64_t q_dim = (int64_t)cfg->n_heads * cfg->head_dim;
    int64_t kv_dim = (int64_t)cfg->n_kv_heads * cfg->head_dim;
    size_t n = 0, bytes = 0, items = 0;
    int rc = 0;
#define ADD(w, r, c, k)                                                         \
    do {                                                                        \
        if (rc == 0)                                                            \
            rc = dummy_add(list, &n, &bytes, &items, (w), (r), (c), (k), esize); \
    } while (0)
    ADD(&m->embed, cfg->vocab_size, hidden, DUMMY_MATRIX);
    ADD(&m->final_norm, hidden, 1, DUMMY_NORM);
    if (!cfg->tie_word_embeddings)
        ADD(&m->lm_head, cfg->vocab_size, hidden, DUMMY_MATRIX);
    for (int i = 0; i < cfg->n_layers; i++) {
        sr_layer_weights *L = &m->layers[i];
        ADD(&L->attn_norm, hidden, 1, DUMMY_NORM);
        ADD(&L->wq, q_dim, hidden, DUMMY_MATRIX);
        ADD(&L->wk, kv_dim, hidden, DUMMY_MATRIX);
        ADD(&L->wv, kv_dim, hidden, DUMMY_MATRIX);
        ADD(&L->wo, hidden, q_dim, DUMMY_MATRIX);
        if (cfg->qkv_bias) {
            ADD(&L->bq, q_dim, 1, DUMMY_BIAS);
            ADD(&L->bk, kv_dim, 1, DUMMY_BIAS);
            ADD(&L->bv, kv_dim, 1, DUMMY_BIAS);
        }
        if (cfg->o_bias)
            ADD(&L->bo, hidden, 1, DUMMY_BIAS);
        ADD(&L->ffn_norm, hidden, 1, DUMMY_NORM);
        ADD(&L->w_gate, inter, hidden, DUMMY_MATRIX);
        ADD(&L->w_up, inter, hidden, DUMMY_MATRIX);
        ADD(&L->w_down, hidden, inter, DUMMY_MATRIX);
        if (cfg->mlp_bias) {
            ADD(&L->b_gate, inter, 1, DUMMY_BIAS);
            ADD(&L->b_up, inter, 1, DUMMY_BIAS);
            ADD(&L->b_down, hidden, 1, DUMMY_BIAS);
        }
    }
#undef ADD
    if (rc != 0) {
        free(list);
        return -1;
    }
    void *buf = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) {
        free(list);
        return sr_error_set("cannot map %zu bytes (%.1f GiB) for %s weights: %s", bytes,
                            (double)bytes / (1u << 30), sr_dtype_name(dtype), strerror(errno));
    }
    /* No MADV_HUGEPAGE: with THP defrag=madvise the faults then compact
     * memory synchronously, which measured slower on an 8B fill. */
    m->storage->dummy = buf;
    m->storage->dummy_size = bytes;
    for (size_t i = 0; i < n; i++) {
        list[i].w->data = (unsigned char *)buf + list[i].offset;
        list[i].w->dtype = dtype;
    }
    if (cfg->tie_word_embeddings)
        m->lm_head = m->embed;

    sr_dummy_job job = {.t = list, .n_t = n, .n_items = items, .buf = buf, .dtype = dtype,
                        .seed = seed};
    atomic_init(&job.next_item, 0);
    atomic_init(&job.done_items, 0);
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    size_t n_threads = cpus > 0 ? (size_t)cpus : 1;
    if (n_threads > SR_DUMMY_MAX_THREADS)
        n_threads = SR_DUMMY_MAX_THREADS;
    if (n_threads > items)
        n_threads = items ? items : 1;
    sr_log(SR_LOG_INFO, "dummy weights: %lld parameters, %.2f GiB %s, seed %llu, %zu threads",
           (long long)model_count_params(m), (double)bytes / (1u << 30), sr_dtype_name(dtype),
           (unsigned long long)seed, n_threads);
    double t0 = sr_mono_s();
    pthread_t tids[SR_DUMMY_MAX_THREADS];
    size_t started = 0;
    /* a thread that cannot start only makes the fill slower */
    for (size_t i = 1; i < n_threads; i++)
        if (pthread_create(&tids[started], NULL, dummy_thread, &job) == 0)
            started++;
    dummy_work(&job, true);
    for (size_t i = 0; i < started; i++)
        pthread_join(tids[i], NULL);
    free(list);
    sr_log(SR_LOG_INFO, "dummy weights: filled in %.1f s", sr_mono_s() - t0);
    return 0;
}
