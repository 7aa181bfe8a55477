#include "daemon/daemon_options.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "config/config_file.h"
#include "config/option_table.h"

#define OFF(f) offsetof(sr_daemon_options, f)
#define BIG 9.007199254740992e15 /* 2^53: integers a double holds exactly */

static const sr_option table[] = {
    {"config", SR_OPT_STRING, OFF(config), 0, 0, NULL, "FILE",
     "read options from FILE first (name = value lines; the command line wins)"},
    {"model", SR_OPT_STRING, OFF(model_dir), 0, 0, NULL, "DIR",
     "Hugging Face model directory (config.json, *.safetensors, tokenizer.json)"},
    {"load-format", SR_OPT_CHOICE, OFF(load_format), 0, 0, "safetensors|dummy", NULL,
     "dummy: seeded random weights from config.json (benchmarks)"},
    {"dummy-seed", SR_OPT_INT64, OFF(dummy_seed), 0, BIG, NULL, "S", "seed of dummy weights"},
    {"backend", SR_OPT_CHOICE, OFF(backend), 0, 0, "auto|cpu|cuda", NULL,
     "compute backend (auto: cuda when a GPU is visible, else cpu; cuda: one GPU per rank, "
     "by local rank)"},
    {"kv-dtype", SR_OPT_CHOICE, OFF(kv_dtype), 0, 0, "auto|f32|bf16", NULL,
     "how the KV cache stores keys and values (auto: bf16 on cuda, f32 on cpu; bf16 holds "
     "twice the tokens)"},
    {"dataplane", SR_OPT_CHOICE, OFF(dataplane), 0, 0, "auto|nccl|mpi", NULL,
     "phase 2's per-layer all-gather: nccl (device to device; --backend cuda, one GPU per "
     "rank), mpi (host-staged), auto (default: nccl where it can run, else mpi)"},
    {"listen", SR_OPT_STRING, OFF(listen), 0, 0, NULL, "HOST:PORT",
     "gRPC address (default 127.0.0.1:50051; 0.0.0.0:PORT for every interface)"},
    {"tls-cert", SR_OPT_STRING, OFF(tls_cert), 0, 0, NULL, "FILE", "TLS certificate chain (PEM)"},
    {"tls-key", SR_OPT_STRING, OFF(tls_key), 0, 0, NULL, "FILE", "TLS private key (PEM)"},
    {"auth-token", SR_OPT_STRING, OFF(auth_token), 0, 0, NULL, "TOKEN",
     "require 'authorization: Bearer TOKEN' on every call"},
    {"auth-token-file", SR_OPT_STRING, OFF(auth_token_file), 0, 0, NULL, "FILE",
     "the same, read from FILE (first line), so the token is not in ps"},
    {"max-message-size", SR_OPT_BYTES, OFF(max_message_bytes), 1024, 2147483647.0, NULL, "SIZE",
     "largest request message (default 64M; long contexts exceed gRPC's 4M)"},
    {"max-calls", SR_OPT_INT, OFF(max_calls), 1, 100000, NULL, "N",
     "gRPC calls handled at once (default 1024)"},
    {"grace", SR_OPT_DOUBLE, OFF(grace_s), 0, 86400, NULL, "SECONDS",
     "on SIGTERM/SIGINT, time running jobs get to finish before they are cancelled "
     "(default 30)"},
    {"job-ttl", SR_OPT_DOUBLE, OFF(job_ttl_s), 0, 31536000, NULL, "SECONDS",
     "how long SubmitJob results are kept after the job ends (default 600)"},
    {"max-jobs-kept", SR_OPT_INT, OFF(max_jobs_kept), 1, 10000000, NULL, "N",
     "ended jobs kept at most, oldest dropped first (default 10000)"},
    {"log-level", SR_OPT_CHOICE, OFF(log_level), 0, 0, "error|warn|info|debug", NULL,
     "log verbosity (default info)"},
    {"kv-budget-tokens", SR_OPT_INT64, OFF(kv_budget_tokens), 0, BIG, NULL, "N",
     "KV cache size per rank in tokens (0: from --kv-budget)"},
    {"kv-budget", SR_OPT_BYTES, OFF(kv_budget_bytes), 0, BIG, NULL, "SIZE",
     "KV cache size per rank in bytes, e.g. 8G (0 with --kv-budget-tokens 0: a default)"},
    {"page-tokens", SR_OPT_INT, OFF(page_tokens), 1, 65536, NULL, "N",
     "tokens per KV page (default 16)"},
    {"max-batch", SR_OPT_INT, OFF(max_batch), 1, 65536, NULL, "N",
     "jobs decoding at once (default 64)"},
    {"max-phase1-tokens", SR_OPT_INT, OFF(max_phase1_tokens), 1, 1 << 24, NULL, "N",
     "context tokens encoded per step, so decoding jobs keep streaming (default 512)"},
    {"mode", SR_OPT_CHOICE, OFF(mode), 0, 0, "star|ring", NULL,
     "default attention mode: star (approximate, fast) or ring (exact)"},
    {"block-size", SR_OPT_INT, OFF(block_size), 0, 2147483647.0, NULL, "N",
     "default context block size (0: context / ranks)"},
    {"anchor-size", SR_OPT_INT, OFF(anchor_size), -1, 2147483647.0, NULL, "N",
     "default anchor size (-1: the block size; 0: no anchor)"},
    {"query-rank", SR_OPT_INT, OFF(query_rank), 0, 1 << 20, NULL, "R",
     "the rank that serves gRPC, samples and holds query KV (default 0)"},
    {"chunk-rows", SR_OPT_INT, OFF(chunk_rows), 1, 1 << 16, NULL, "N",
     "rows per forward call in prefill (default 256)"},
    {"max-queue", SR_OPT_INT, OFF(max_queue), 1, 1 << 24, NULL, "N",
     "queued jobs before new ones are refused (default 1024)"},
    {"metrics-listen", SR_OPT_STRING, OFF(metrics_listen), 0, 0, NULL, "HOST:PORT",
     "serve Prometheus metrics at http://HOST:PORT/metrics on the query rank (default off)"},
    {"help", SR_OPT_BOOL, OFF(help), 0, 0, NULL, NULL, "this help"},
    {NULL, 0, 0, 0, 0, NULL, NULL, NULL},
};

void daemon_options_usage(void)
{
    fputs("usage: mpirun -np N starrelayd [serve] --model DIR [--listen HOST:PORT] [options]\n"
          "Serves the starrelay.v1 gRPC API on the query rank; every rank holds the model\n"
          "and a shard of each job's context. Options (also 'name = value' in --config FILE):\n",
          stderr);
    option_table_print_help(table, stderr);
}

static int set_default_string(char **field, const char *v)
{
    if (*field)
        return 0;
    *field = strdup(v);
    return *field ? 0 : sr_error_set("out of memory");
}

static int read_token_file(sr_daemon_options *o)
{
    FILE *f = fopen(o->auth_token_file, "r");
    if (!f)
        return sr_error_set("--auth-token-file: cannot open '%s': %s", o->auth_token_file,
                            strerror(errno));
    char line[1024];
    char *got = fgets(line, sizeof line, f);
    fclose(f);
    if (!got)
        return sr_error_set("--auth-token-file: '%s' is empty", o->auth_token_file);
    line[strcspn(line, "\r\n")] = '\0';
    if (!line[0])
        return sr_error_set("--auth-token-file: the first line of '%s' is empty",
                            o->auth_token_file);
    free(o->auth_token);
    o->auth_token = strdup(line);
    return o->auth_token ? 0 : sr_error_set("out of memory");
}

int daemon_options_parse(sr_daemon_options *o, int argc, char **argv)
{
    memset(o, 0, sizeof *o);
    o->max_message_bytes = 64LL << 20;
    o->max_calls = 1024;
    o->grace_s = 30;
    o->job_ttl_s = 600;
    o->max_jobs_kept = 10000;
    o->page_tokens = 16;
    o->max_batch = 64;
    o->max_phase1_tokens = 512;
    o->anchor_size = -1;
    o->chunk_rows = 256;
    o->max_queue = 1024;
    /* The file first, so the command line overrides it: find --config. */
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc) {
            if (option_table_set(table, o, "config", argv[i + 1], "--config") != 0)
                return -1;
        } else if (!strncmp(argv[i], "--config=", 9)) {
            if (option_table_set(table, o, "config", argv[i] + 9, "--config") != 0)
                return -1;
        }
    }
    if (o->config && config_file_apply(o->config, table, o) != 0)
        return -1;
    if (option_table_parse_argv(table, o, argc, argv) != 0)
        return -1;
    if (o->help)
        return 0;
    if (set_default_string(&o->load_format, "safetensors") ||
        set_default_string(&o->backend, "auto") || set_default_string(&o->dataplane, "auto") ||
        set_default_string(&o->kv_dtype, "auto") ||
        set_default_string(&o->listen, "127.0.0.1:50051") ||
        set_default_string(&o->log_level, "info") || set_default_string(&o->mode, "star"))
        return -1;
    if (!o->model_dir)
        return sr_error_set("--model DIR is required (or 'model = DIR' in the --config file)");
    if (!strchr(o->listen, ':'))
        return sr_error_set("--listen: expected HOST:PORT, got '%s'", o->listen);
    if (!o->tls_cert != !o->tls_key)
        return sr_error_set("TLS needs both --tls-cert and --tls-key");
    if (o->auth_token && o->auth_token_file)
        return sr_error_set("give --auth-token or --auth-token-file, not both");
    if (o->auth_token_file && read_token_file(o) != 0)
        return -1;
    if (o->auth_token && !o->auth_token[0])
        return sr_error_set("--auth-token is empty");
    if (o->metrics_listen && !strchr(o->metrics_listen, ':'))
        return sr_error_set("--metrics-listen: expected HOST:PORT, got '%s'", o->metrics_listen);
    if (o->block_size > 0 && o->anchor_size > o->block_size)
        return sr_error_set("--anchor-size %d is larger than --block-size %d", o->anchor_size,
                            o->block_size);
    return 0;
}

void daemon_options_free(sr_daemon_options *o)
{
    option_table_free(table, o);
}

void daemon_options_to_engine(const sr_daemon_options *o, sr_engine_options *eo)
{
    engine_options_default(eo);
    eo->kv_budget_tokens = o->kv_budget_tokens;
    eo->kv_budget_bytes = o->kv_budget_bytes;
    eo->page_tokens = o->page_tokens;
    eo->max_batch = o->max_batch;
    eo->max_phase1_tokens_per_step = o->max_phase1_tokens;
    eo->default_mode = !strcmp(o->mode, "ring") ? SR_MODE_RING : SR_MODE_STAR;
    eo->default_block_size = o->block_size;
    eo->default_anchor_size = o->anchor_size;
    eo->query_rank = o->query_rank;
    eo->chunk_rows = o->chunk_rows;
    eo->max_queue = o->max_queue;
}

void daemon_options_to_load(const sr_daemon_options *o, sr_load_options *lo)
{
    memset(lo, 0, sizeof *lo);
    lo->format = !strcmp(o->load_format, "dummy") ? SR_LOAD_DUMMY : SR_LOAD_SAFETENSORS;
    lo->dummy_dtype = SR_DTYPE_BF16;
    lo->dummy_seed = (uint64_t)o->dummy_seed;
}
