/* Device graphs for the decode step (backend.h's graph_begin/end/release).
 *
 * A batch-1 decode step is some 350 small kernels; launched one by one,
 * each pays the launch and the gap between kernels, which is a large part
 * of a step that should take only as long as reading the weights once.
 * Recorded into a graph (stream capture) and launched as one, the gaps
 * close.
 *
 * A step differs from the one before only in arguments (the KV length
 * grows, so the attention's key count, grid and the cache rows written
 * move), so every step is recorded again and the cached executable graph
 * of the same (owner, key) is updated in place (cudaGraphExecUpdate),
 * which is much cheaper than instantiating one. When the shapes change the
 * graph's layout (a merge kernel appears once the keys are split), the
 * update fails and the graph is instantiated anew.
 *
 * Recording must never change what the caller sees: if an operation could
 * not be recorded (a wait for the device, a transfer from host memory, an
 * allocation), the record is dropped, nothing ran, and graph_end says so;
 * the caller queues the same work again as usual. Capture is thread-local
 * (cudaStreamCaptureModeThreadLocal), so other threads of the process may
 * allocate and synchronize while this one records. */
#include <stdlib.h>
#include <string.h>

#include "attention_cuda/cuda_internal.h"

extern "C" {
#include "common/log.h"
}

/* Most executable graphs kept; the least recently used goes first. A
 * decode step of the 8B model in segments of a few layers is ~10 graphs
 * per row count, so this holds many shapes. */
enum { GRAPH_CACHE_MAX = 256 };

typedef struct {
    uint64_t owner, key;
    cudaGraphExec_t exec;
    uint64_t used; /* clock of the last launch */
} graph_entry;

struct cuda_graph_cache {
    graph_entry *e;
    int n, cap;
    uint64_t clock;
    uint64_t owner, key; /* of the record in progress */
    cuda_graph_stats stats;
};

static struct cuda_graph_cache *cache_of(cuda_ctx *ctx)
{
    if (!ctx->graph_cache)
        ctx->graph_cache = (struct cuda_graph_cache *)calloc(1, sizeof *ctx->graph_cache);
    return ctx->graph_cache;
}

int cuda_graph_begin(sr_backend *be, uint64_t owner, uint64_t key)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    struct cuda_graph_cache *c = cache_of(ctx);
    if (!ctx->graphs || ctx->capturing || !c)
        return 0;
    if (cudaStreamBeginCapture(ctx->stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess) {
        /* not an error for the caller: the work runs as usual */
        (void)cudaGetLastError();
        return 0;
    }
    ctx->capturing = 1;
    c->owner = owner;
    c->key = key;
    return 1;
}

static graph_entry *cache_find(struct cuda_graph_cache *c, uint64_t owner, uint64_t key)
{
    for (int i = 0; i < c->n; i++)
        if (c->e[i].owner == owner && c->e[i].key == key)
            return &c->e[i];
    return NULL;
}

/* A slot for a new entry: appended, or the least recently used one's,
 * whose graph is destroyed (an in-flight launch of it still completes). */
static graph_entry *cache_slot(struct cuda_graph_cache *c)
{
    if (c->n < c->cap)
        return &c->e[c->n++];
    if (c->cap < GRAPH_CACHE_MAX) {
        int cap = c->cap ? 2 * c->cap : 16;
        graph_entry *e = (graph_entry *)realloc(c->e, (size_t)cap * sizeof *e);
        if (e) {
            c->e = e;
            c->cap = cap;
            return &c->e[c->n++];
        }
        if (!c->n)
            return NULL;
    }
    graph_entry *old = &c->e[0];
    for (int i = 1; i < c->n; i++)
        if (c->e[i].used < old->used)
            old = &c->e[i];
    cudaGraphExecDestroy(old->exec);
    old->exec = NULL;
    return old;
}

int cuda_graph_end(sr_backend *be, int ok)
{
    cuda_ctx *ctx = cuda_ctx_of(be);
    struct cuda_graph_cache *c = ctx->graph_cache;
    if (!ctx->capturing || !c)
        return sr_error_set("cuda graph_end without a graph_begin that recorded");
    ctx->capturing = 0;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(ctx->stream, &g);
    if (e != cudaSuccess || !ok || !g) {
        /* An operation could not be recorded (it invalidated the capture)
         * or failed: nothing ran; the caller queues the work as usual. */
        (void)cudaGetLastError();
        if (g)
            cudaGraphDestroy(g);
        c->stats.fallbacks++;
        sr_log(SR_LOG_DEBUG, "cuda graph: record dropped (%s); queued as usual",
               e != cudaSuccess ? cudaGetErrorString(e) : "an operation failed");
        return 1;
    }
    graph_entry *ent = cache_find(c, c->owner, c->key);
    if (ent) {
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate(ent->exec, g, &info) == cudaSuccess) {
            c->stats.updates++;
        } else {
            /* the layout changed (another kernel count, node kind): the
             * update is refused and leaves no error behind but the one
             * returned; instantiate below */
            (void)cudaGetLastError();
            cudaGraphExecDestroy(ent->exec);
            ent->exec = NULL;
        }
    }
    if (!ent || !ent->exec) {
        cudaGraphExec_t exec = NULL;
        if (cudaGraphInstantiate(&exec, g, 0) != cudaSuccess) {
            (void)cudaGetLastError();
            cudaGraphDestroy(g);
            if (ent)
                *ent = c->e[--c->n];
            c->stats.fallbacks++;
            sr_log(SR_LOG_DEBUG, "cuda graph: instantiation failed; queued as usual");
            return 1;
        }
        if (!ent)
            ent = cache_slot(c);
        if (!ent) {
            cudaGraphExecDestroy(exec);
            cudaGraphDestroy(g);
            c->stats.fallbacks++;
            return 1;
        }
        ent->owner = c->owner;
        ent->key = c->key;
        ent->exec = exec;
        c->stats.instantiations++;
    }
    cudaGraphDestroy(g); /* the executable graph is independent of it */
    ent->used = ++c->clock;
    CUDA_TRY(cudaGraphLaunch(ent->exec, ctx->stream));
    c->stats.launches++;
    return 0;
}

void cuda_graph_release(sr_backend *be, uint64_t owner)
{
    struct cuda_graph_cache *c = cuda_ctx_of(be)->graph_cache;
    if (!c)
        return;
    for (int i = 0; i < c->n;) {
        if (c->e[i].owner == owner) {
            cudaGraphExecDestroy(c->e[i].exec);
            c->e[i] = c->e[--c->n];
        } else {
            i++;
        }
    }
}

void cuda_graph_cache_free(cuda_ctx *ctx)
{
    struct cuda_graph_cache *c = ctx->graph_cache;
    if (!c)
        return;
    for (int i = 0; i < c->n; i++)
        cudaGraphExecDestroy(c->e[i].exec);
    free(c->e);
    free(c);
    ctx->graph_cache = NULL;
}

void backend_cuda_graph_stats(const sr_backend *be, cuda_graph_stats *out)
{
    const struct cuda_graph_cache *c = cuda_ctx_of(be)->graph_cache;
    if (c)
        *out = c->stats;
    else
        memset(out, 0, sizeof *out);
}
