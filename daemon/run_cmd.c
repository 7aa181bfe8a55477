/* The one-shot command: load, tokenize the segments, generate, print.
 * Used by tests, benchmarks and users who want no server.
 *
 * Under `mpirun -np N` every rank runs this: every rank loads the model,
 * the query rank builds the job and its plan and broadcasts it, then the
 * ranks run it together (hosts/job.c). Without an MPI launcher it is a job
 * of one rank that does not start MPI (STARRELAY_MPI=1 makes it an MPI
 * singleton). After each stage that can fail on some rank, all ranks agree on the
 * outcome, so a failure anywhere ends every rank with a message naming the
 * rank and host, and a non-zero exit, never a hang. */
#include "daemon/run_cmd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attention_cuda/backend_select.h"
#include "attention_cuda/devcomm_nccl.h"
#include "backend/backend.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"
#include "daemon/run_input.h"
#include "daemon/run_options.h"
#include "daemon/run_output.h"
#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/kvcache.h"
#include "engine/local_step.h"
#include "hosts/job.h"
#include "hosts/plan.h"
#include "ring/fail_hook.h"
#include "ring/transport.h"

static int stream_to_stdout(void *user, const int32_t *ids, size_t n_ids, const char *piece,
                            size_t len)
{
    (void)user, (void)ids, (void)n_ids;
    fwrite(piece, 1, len, stdout);
    fflush(stdout);
    return 0;
}

static sr_stage_status stage(int rc)
{
    return rc == 0 ? SR_STAGE_OK : SR_STAGE_FAILED;
}

/* Everything one rank holds for the job; freed in one place. */
typedef struct {
    sr_run_options o;
    sr_model model;
    sr_run_input in;          /* query host */
    sr_plan plan;
    sr_backend *be;
    sr_devcomm *dc;           /* phase 2's device data plane; NULL: host-staged MPI */
    float *first_logits;      /* query host, --logits-out */
} run_state;

static void run_state_free(run_state *s)
{
    free(s->first_logits);
    devcomm_destroy(s->dc); /* before the backend whose device it uses */
    backend_destroy(s->be);
    plan_free(&s->plan);
    run_input_free(&s->in);
    model_free(&s->model);
    run_options_free(&s->o);
}

static sr_generate_request make_request(run_state *s)
{
    sr_generate_request req = {
        .sampling = s->o.sampling,
        .stop = {.stop_ids = s->in.stop_ids, .n_stop_ids = (size_t)s->in.n_stop_ids,
                 .stop_strings = (char **)s->o.stop_strings,
                 .n_stop_strings = (size_t)s->o.n_stop_strings, .max_tokens = s->o.max_tokens},
        .tok = s->in.tok,
        .first_logits = s->first_logits,
        .on_token = (s->o.json || !s->in.tok) ? NULL : stream_to_stdout,
    };
    return req;
}

/* The reference: one process, one KV cache, the whole prompt at once. */
static int run_global(run_state *s, sr_generate_result *res, sr_run_report *rep)
{
    sr_ids all = {0};
    sr_forward fwd = {0};
    sr_kvcache kv = {0};
    int rc = -1;
    if (prompt_concat(&s->in.prompt, &all) != 0)
        return -1;
    if (forward_init(&fwd, s->be, &s->model, s->o.chunk_rows) != 0 ||
        kvcache_init(&kv, s->be, &s->model.cfg, all.n + s->o.max_tokens) != 0)
        goto done;
    sr_local_step step = {.fwd = &fwd, .kv = &kv};
    sr_generate_request req = make_request(s);
    req.prompt = all.ids;
    req.n_prompt = all.n;
    /* A backend that samples on the device gets only the ids back;
     * STARRELAY_HOST_SAMPLING=1 keeps the host sampler (A/B checks). */
    const char *host_sampling = getenv("STARRELAY_HOST_SAMPLING");
    if (s->be->ops->sample && !(host_sampling && atoi(host_sampling)))
        req.step_sample = local_step_sample;
    if (generate_run(local_step, &step, s->model.cfg.vocab_size, &req, res) != 0)
        goto done;
    rep->phase1_s = 0;
    rep->phase2_s = res->prefill_s + res->decode_s;
    rc = 0;
done:
    kvcache_free(&kv);
    forward_free(&fwd);
    free(all.ids);
    return rc;
}

/* Query host: the job's ids, stop rules and plan, checked against the KV
 * budget; serialized for the other ranks. */
static int build_job(run_state *s, sr_transport *tr, uint8_t **msg, size_t *len)
{
    if (run_input_build(&s->in, &s->o, &s->model) != 0)
        return -1;
    const sr_prompt *pr = &s->in.prompt;
    int global = !strcmp(s->o.mode, "global");
    if (!global && pr->query.n == 0)
        return sr_error_set("the query has no tokens; give a non-empty --query or --query-ids");
    sr_attn_mode mode = SR_MODE_STAR;
    if (!global && plan_mode_parse(s->o.mode, &mode) != 0)
        return -1;
    if (plan_init(&s->plan, tr->size, s->o.query_rank, mode, pr->context.n, s->o.block_size,
                  s->o.anchor_size) != 0 ||
        plan_set_ids(&s->plan, pr->system.ids, pr->system.n, pr->context.ids, pr->context.n,
                     pr->query.ids, pr->query.n) != 0)
        return -1;
    s->plan.max_tokens = s->o.max_tokens;
    s->plan.chunk_rows = s->o.chunk_rows;
    s->plan.sampling = s->o.sampling;
    if (plan_check_budget(&s->plan, s->o.kv_budget_tokens) != 0)
        return -1;
    if (s->o.logits_out) {
        s->first_logits = malloc((size_t)s->model.cfg.vocab_size * sizeof(float));
        if (!s->first_logits)
            return sr_error_set("out of memory for the logits");
    }
    if (global)
        return 0;
    sr_log(SR_LOG_INFO, "%s plan: %d ranks, system %d, context %d in %d blocks of %d, anchor %d, "
           "query %d",
           plan_mode_name(mode), tr->size, pr->system.n, pr->context.n, s->plan.n_blocks,
           s->plan.block_size, s->plan.anchor_size, pr->query.n);
    return plan_serialize(&s->plan, msg, len);
}

/* Every rank: the plan message from the query host. */
static int receive_plan(run_state *s, sr_transport *tr, uint8_t *msg, size_t len)
{
    int root = s->o.query_rank;
    uint64_t n = len;
    if (tr->ops->bcast(tr, &n, sizeof n, root) != 0)
        return -1;
    if (tr->rank == root)
        return tr->ops->bcast(tr, msg, (size_t)n, root);
    uint8_t *buf = malloc(n ? (size_t)n : 1);
    /* Take part in the broadcast even without memory: the others are in it. */
    int rc = tr->ops->bcast(tr, buf, buf ? (size_t)n : 0, root);
    if (rc == 0 && !buf)
        rc = sr_error_set("out of memory for the %llu-byte plan", (unsigned long long)n);
    if (rc == 0)
        rc = plan_deserialize(&s->plan, buf, (size_t)n);
    free(buf);
    return rc;
}

static int run_on_rank(sr_transport *tr, int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            if (tr->rank == 0)
                run_options_usage();
            return 0;
        }
    run_state s;
    memset(&s, 0, sizeof s);
    sr_job_result job = {0};
    sr_generate_result gres = {0};
    uint8_t *msg = NULL;
    size_t msg_len = 0;
    int exit_code = 1;

    /* Options: every rank parses the same argv; rank 0 speaks for them. */
    int rc = run_options_parse(&s.o, argc, argv);
    sr_dataplane plane = SR_DATAPLANE_AUTO;
    if (rc == 0 && dataplane_parse(s.o.dataplane, &plane) == 0)
        rc = dataplane_check_request(plane, s.o.backend, tr->size);
    else if (rc == 0)
        rc = -1;
    if (rc == 0 && s.o.query_rank >= tr->size)
        rc = sr_error_set("--query-rank %d: the job has %d rank%s (0..%d)", s.o.query_rank,
                          tr->size, tr->size == 1 ? "" : "s", tr->size - 1);
    if (rc == 0 && !strcmp(s.o.mode, "global") && tr->size > 1)
        rc = sr_error_set("--mode global runs the whole job in one process; start it without "
                          "mpirun (or use --mode star or ring across %d ranks)",
                          tr->size);
    if (transport_agree(tr, stage(rc), 0) != 0) {
        if (tr->rank == 0) {
            fprintf(stderr, "starrelayd run: %s\n", sr_error_get());
            run_options_usage();
        }
        run_options_free(&s.o);
        return 2;
    }
    const int root = s.o.query_rank, is_query = tr->rank == root;
    if (tr->size > 1) {
        char tag[32];
        snprintf(tag, sizeof tag, "rank %d", tr->rank);
        sr_log_set_tag(tag);
        /* The query rank tells the story; the others speak up only for
         * problems, unless asked (STARRELAY_LOG). */
        if (!is_query && !getenv("STARRELAY_LOG"))
            sr_log_set_level(SR_LOG_WARN);
    }

    double t_load = sr_mono_s();
    rc = model_load(&s.model, s.o.model_dir, &s.o.load);
    if (rc == 0)
        rc = fail_hook_check("load", tr->rank);
    if (transport_agree(tr, stage(rc), root) != 0) {
        sr_error_prefix("loading the model: ");
        goto fail;
    }
    sr_log(SR_LOG_INFO, "loaded %s: %d layers, hidden %d, %lld parameters in %.1f s",
           s.model.cfg.arch_name, s.model.cfg.n_layers, s.model.cfg.hidden_size,
           (long long)model_count_params(&s.model), sr_mono_s() - t_load);

    rc = is_query ? build_job(&s, tr, &msg, &msg_len) : 0;
    if (transport_agree(tr, stage(rc), root) != 0)
        goto fail;

    s.be = backend_create_named(s.o.backend, s.o.kv_dtype);
    /* One process has nothing to gather; "mpi" names the host path. */
    sr_run_report rep = {.mode = s.o.mode, .dataplane = devcomm_plane_name(NULL),
                         .backend = s.be ? s.be->ops->name : NULL,
                         .kv_dtype = s.be ? backend_kv_dtype_name(s.be->kv_dtype) : NULL};
    if (!strcmp(s.o.mode, "global")) {
        if (!s.be || run_global(&s, &gres, &rep) != 0)
            goto fail;
    } else {
        rc = receive_plan(&s, tr, msg, msg_len);
        if (rc == 0 && !s.be)
            rc = -1;
        if (transport_agree(tr, stage(rc), root) != 0) {
            sr_error_prefix("sending the plan: ");
            goto fail;
        }
        /* Collective: every rank decides the same from the same facts. */
        rc = devcomm_select(tr, s.be, plane, &s.dc);
        if (transport_agree(tr, stage(rc), root) != 0) {
            sr_error_prefix("choosing the data plane: ");
            goto fail;
        }
        rep.dataplane = devcomm_plane_name(s.dc);
        sr_generate_request req = make_request(&s);
        if (job_run(tr, s.be, s.dc, &s.model, &s.plan, is_query ? &req : NULL, &job) != 0)
            goto fail;
        rep.plan = &s.plan;
        rep.phase1_s = job.phase1_s;
        rep.phase2_s = job.phase2_s;
        rep.phase2_allgather_s = job.phase2_allgather_s;
        gres = job.gen;
        memset(&job.gen, 0, sizeof job.gen);
    }
    if (is_query) {
        if (s.o.logits_out &&
            run_output_logits(s.o.logits_out, s.first_logits, s.model.cfg.vocab_size) != 0)
            goto fail;
        if (run_output_print(&s.o, &s.in, &gres, &rep) != 0)
            goto fail;
    }
    exit_code = 0;
    goto done;
fail:
    /* After an agreed failure the query rank holds every failing rank's
     * message; the others only echo it. */
    if (is_query)
        fprintf(stderr, "starrelayd run: %s\n", sr_error_get());
    else
        sr_log(SR_LOG_DEBUG, "%s", sr_error_get());
done:
    generate_result_free(&gres);
    job_result_free(&job);
    free(msg);
    run_state_free(&s);
    return exit_code;
}

int run_cmd_main(int argc, char **argv)
{
    sr_transport *tr = transport_create_for_launch();
    if (!tr) {
        fprintf(stderr, "starrelayd run: %s\n", sr_error_get());
        return 1;
    }
    int rc = run_on_rank(tr, argc, argv);
    transport_destroy(tr);
    return rc;
}
