/* The serving daemon's life cycle on one rank.
 *
 * Every rank parses the same options, loads the model and runs the engine
 * on its main thread (the only thread that calls MPI). The query rank also
 * runs the gRPC server on its own threads; it starts before the model is
 * loaded so health probes see NOT_SERVING, then SERVING. After each stage
 * that can fail, the ranks agree on the outcome (transport_agree), so an
 * error anywhere ends every rank with one message, never a hang.
 *
 * Signals: SIGTERM and SIGINT go to one signal thread. On the query rank the first one drains (no new jobs,
 * running jobs get --grace seconds, then are cancelled) and the engine
 * stops every rank; a second one cancels at once. Other ranks ignore them:
 * the query rank decides when the cluster stops. */
#include "daemon/server_main.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "attention_cuda/backend_select.h"
#include "attention_cuda/devcomm_nccl.h"
#include "backend/backend.h"
#include "common/clock.h"
#include "common/error.h"
#include "common/log.h"
#include "daemon/api_service.h"
#include "daemon/daemon_options.h"
#include "daemon/grpc_server.h"
#include "daemon/job_table.h"
#include "daemon/metrics.h"
#include "daemon/metrics_http.h"
#include "hosts/engine.h"
#include "ring/transport.h"
#include "tokenizer/tokenizer.h"

static sr_stage_status stage(int rc)
{
    return rc == 0 ? SR_STAGE_OK : SR_STAGE_FAILED;
}

/* ---- the signal thread ---- */

/* The handler only writes the signal number to a pipe (async-signal-safe);
 * the signal thread reads it and does the work. A handler rather than
 * sigwait(), because libraries start threads before main (OpenBLAS) that
 * would not have the signals blocked. */
static int signal_pipe[2] = {-1, -1};

static void on_signal(int sig)
{
    unsigned char b = (unsigned char)sig;
    int saved = errno;
    ssize_t w = write(signal_pipe[1], &b, 1);
    (void)w;
    errno = saved;
}

typedef struct {
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    sr_engine *engine;     /* set once created (query rank) */
    sr_api *api;
    bool is_query;
    double grace_s;
    int signals;           /* termination signals received */
} signal_state;

/* Caller holds mu. */
static void drain_locked(signal_state *s)
{
    if (!s->engine || s->signals == 0)
        return;
    if (s->api)
        api_set_draining(s->api);
    engine_request_shutdown(s->engine, s->signals > 1 ? 0 : s->grace_s);
}

static void *signal_main(void *arg)
{
    signal_state *s = arg;
    for (;;) {
        unsigned char b;
        ssize_t r = read(signal_pipe[0], &b, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r != 1 || b == 0)   /* 0: the daemon is exiting */
            return NULL;
        int sig = b;
        pthread_mutex_lock(&s->mu);
        if (!s->is_query) {
            sr_log(SR_LOG_DEBUG, "%s ignored: the query rank stops the cluster", strsignal(sig));
            pthread_mutex_unlock(&s->mu);
            continue;
        }
        s->signals++;
        if (s->signals == 1)
            sr_log(SR_LOG_INFO,
                   "%s: shutting down; no new jobs, running jobs get %.0f s to finish "
                   "(send it again to cancel them now)",
                   strsignal(sig), s->grace_s);
        else
            sr_log(SR_LOG_INFO, "%s again: cancelling the running jobs now", strsignal(sig));
        drain_locked(s);
        pthread_mutex_unlock(&s->mu);
    }
}

static int signal_state_start(signal_state *s)
{
    memset(s, 0, sizeof *s);
    pthread_mutex_init(&s->mu, NULL);
    /* Until the options say which rank serves, rank 0 is assumed to. */
    s->is_query = true;
    s->grace_s = 30;
    if (pipe(signal_pipe) != 0)
        return sr_error_set("cannot create the signal pipe: %s", strerror(errno));
    fcntl(signal_pipe[1], F_SETFL, fcntl(signal_pipe[1], F_GETFL) | O_NONBLOCK);
    fcntl(signal_pipe[0], F_SETFD, FD_CLOEXEC);
    fcntl(signal_pipe[1], F_SETFD, FD_CLOEXEC);
    if (pthread_create(&s->thread, NULL, signal_main, s) != 0)
        return sr_error_set("cannot start the signal thread");
    s->started = true;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static void signal_state_set_engine(signal_state *s, sr_engine *e, sr_api *api)
{
    pthread_mutex_lock(&s->mu);
    s->engine = e;
    s->api = api;
    /* A signal that came while loading takes effect now. */
    drain_locked(s);
    pthread_mutex_unlock(&s->mu);
}

/* Stops the thread. The handler stays installed (the write end of the pipe
 * is non-blocking and stays open), so a signal that comes while the process
 * exits changes nothing: the exit code stays the daemon's. */
static void signal_state_stop(signal_state *s)
{
    if (s->started) {
        unsigned char quit = 0;
        ssize_t w = write(signal_pipe[1], &quit, 1);
        (void)w;
        pthread_join(s->thread, NULL);
        s->started = false;
    }
    pthread_mutex_destroy(&s->mu);
}

/* ---- one rank ---- */

typedef struct {
    sr_daemon_options o;
    sr_model model;
    bool model_loaded;
    sr_backend *be;
    sr_devcomm *dc;              /* phase 2's device data plane; NULL: host-staged MPI */
    sr_tokenizer *tok;
    sr_engine *engine;
    sr_api *api;
    rpc_server *server;
    sr_job_table *jobs;
    int port;                    /* the bound port (--listen HOST:0 picks one) */
    sr_metrics *metrics;         /* query rank */
    sr_metrics_http *metrics_http;   /* --metrics-listen */
} serve_state;

static bool file_exists(const char *dir, const char *name)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    return stat(path, &st) == 0;
}

static int start_server(serve_state *s)
{
    s->api = api_create(&s->o);
    if (!s->api)
        return sr_error_set("out of memory");
    rpc_server_config c = {
        .listen = s->o.listen,
        .tls_cert_file = s->o.tls_cert,
        .tls_key_file = s->o.tls_key,
        .auth_token = s->o.auth_token,
        .max_message_bytes = s->o.max_message_bytes,
        .max_calls = s->o.max_calls,
        .handler = api_handle_call,
        .user = s->api,
    };
    int port = 0;
    s->server = rpc_server_start(&c, &port);
    s->port = port;
    if (!s->server)
        return -1;
    s->metrics = metrics_create();
    if (!s->metrics || metrics_declare_daemon(s->metrics) != 0)
        return sr_error_set("cannot create the metrics registry");
    if (s->o.metrics_listen) {
        int mport = 0;
        s->metrics_http = metrics_http_start(s->o.metrics_listen, s->metrics, &mport);
        if (!s->metrics_http)
            return -1;
        sr_log(SR_LOG_INFO, "metrics on http://%s/metrics (port %d)", s->o.metrics_listen,
               mport);
    }
    sr_log(SR_LOG_INFO, "gRPC on %s (port %d, pid %d)%s%s; health is NOT_SERVING until the "
           "model is loaded",
           s->o.listen, port, (int)getpid(), s->o.tls_cert ? ", TLS" : "",
           s->o.auth_token ? ", bearer token required" : "");
    return 0;
}

static int load_tokenizer(serve_state *s)
{
    if (!file_exists(s->o.model_dir, "tokenizer.json")) {
        sr_log(SR_LOG_WARN, "%s has no tokenizer.json: jobs must give token ids", s->o.model_dir);
        return 0;
    }
    s->tok = tokenizer_load(s->o.model_dir);
    return s->tok ? 0 : sr_error_prefix("loading the tokenizer: ");
}

static int serve_on_rank(sr_transport *tr, signal_state *sig, int argc, char **argv)
{
    serve_state s;
    memset(&s, 0, sizeof s);
    int exit_code = 1;

    int rc = daemon_options_parse(&s.o, argc, argv);
    if (rc == 0 && s.o.help) {
        if (tr->rank == 0)
            daemon_options_usage();
        daemon_options_free(&s.o);
        return 0;
    }
    if (rc == 0 && s.o.query_rank >= tr->size)
        rc = sr_error_set("--query-rank %d: the job has %d rank%s (0..%d)", s.o.query_rank,
                          tr->size, tr->size == 1 ? "" : "s", tr->size - 1);
    sr_dataplane plane = SR_DATAPLANE_AUTO;
    if (rc == 0 && dataplane_parse(s.o.dataplane, &plane) == 0)
        rc = dataplane_check_request(plane, s.o.backend, tr->size);
    else if (rc == 0)
        rc = -1;
    sr_log_level level;
    if (rc == 0 && sr_log_parse_level(s.o.log_level, &level) == 0)
        sr_log_set_level(level);
    if (transport_agree(tr, stage(rc), 0) != 0) {
        if (tr->rank == 0)
            fprintf(stderr, "starrelayd: %s\n(see starrelayd --help)\n", sr_error_get());
        daemon_options_free(&s.o);
        return 2;
    }
    const int root = s.o.query_rank;
    const bool is_query = tr->rank == root;
    if (tr->size > 1) {
        char tag[32];
        snprintf(tag, sizeof tag, "rank %d", tr->rank);
        sr_log_set_tag(tag);
        if (!is_query && !getenv("STARRELAY_LOG"))
            sr_log_set_level(SR_LOG_WARN);
    }
    pthread_mutex_lock(&sig->mu);
    sig->is_query = is_query;
    sig->grace_s = s.o.grace_s;
    pthread_mutex_unlock(&sig->mu);

    rc = is_query ? start_server(&s) : 0;
    if (transport_agree(tr, stage(rc), root) != 0)
        goto fail;

    /* Test hook: the test models load in milliseconds, too fast to see
     * health NOT_SERVING; STARRELAY_TEST_LOAD_DELAY_S=S waits S seconds. */
    const char *delay = getenv("STARRELAY_TEST_LOAD_DELAY_S");
    if (delay && atof(delay) > 0)
        usleep((useconds_t)(atof(delay) * 1e6));
    double t_load = sr_mono_s();
    sr_load_options lo;
    daemon_options_to_load(&s.o, &lo);
    rc = model_load(&s.model, s.o.model_dir, &lo);
    s.model_loaded = rc == 0;
    if (rc == 0) {
        s.be = backend_create_named(s.o.backend, s.o.kv_dtype);
        if (!s.be)
            rc = sr_error_prefix("--backend %s: ", s.o.backend);
    }
    if (rc == 0 && is_query)
        rc = load_tokenizer(&s);
    if (transport_agree(tr, stage(rc), root) != 0) {
        sr_error_prefix("loading the model: ");
        goto fail;
    }
    sr_log(SR_LOG_INFO, "loaded %s from %s: %d layers, %lld parameters in %.1f s on %d rank%s",
           s.model.cfg.arch_name, s.o.model_dir, s.model.cfg.n_layers,
           (long long)model_count_params(&s.model), sr_mono_s() - t_load, tr->size,
           tr->size == 1 ? "" : "s");

    /* Collective: every rank decides the same from the same facts. */
    rc = devcomm_select(tr, s.be, plane, &s.dc);
    if (transport_agree(tr, stage(rc), root) != 0) {
        sr_error_prefix("choosing the data plane: ");
        goto fail;
    }
    sr_engine_options eo;
    daemon_options_to_engine(&s.o, &eo);
    eo.devcomm = s.dc;
    s.engine = engine_create(&eo, tr, s.be, &s.model, s.tok, s.o.model_dir);
    rc = s.engine ? 0 : -1;
    if (rc == 0 && is_query) {
        s.jobs = job_table_create(s.engine, s.o.job_ttl_s, s.o.max_jobs_kept);
        if (!s.jobs)
            rc = sr_error_set("cannot start the job table");
        else
            job_table_set_metrics(s.jobs, s.metrics);
    }
    if (transport_agree(tr, stage(rc), root) != 0) {
        sr_error_prefix("starting the engine: ");
        goto fail;
    }
    if (is_query) {
        api_set_engine(s.api, s.engine, s.jobs, s.model.cfg.vocab_size,
                       s.model.cfg.max_position_embeddings);
        signal_state_set_engine(sig, s.engine, s.api);
        metrics_http_set_engine(s.metrics_http, s.engine);
        sr_log(SR_LOG_INFO, "serving on %s (port %d)", s.o.listen, s.port);
    }
    rc = engine_run(s.engine);
    if (rc != 0)
        goto fail;
    if (is_query)
        sr_log(SR_LOG_INFO, "engine stopped; closing the gRPC server");
    exit_code = 0;
    goto done;
fail:
    if (is_query)
        fprintf(stderr, "starrelayd: %s\n", sr_error_get());
    else
        sr_log(SR_LOG_DEBUG, "%s", sr_error_get());
done:
    signal_state_set_engine(sig, NULL, NULL);
    if (s.api)
        api_set_draining(s.api);
    /* Wake anything waiting on a job, then end the calls still open: the
     * engine has stopped, so no handler can block on it any more. */
    if (s.jobs)
        job_table_close(s.jobs);
    /* Before the engine goes: a scrape may be asking it. */
    metrics_http_stop(s.metrics_http);
    rpc_server_destroy(s.server);
    job_table_destroy(s.jobs);
    metrics_destroy(s.metrics);
    api_destroy(s.api);
    if (s.engine)
        engine_destroy(s.engine);
    devcomm_destroy(s.dc); /* after the engine that uses it, before its backend */
    tokenizer_free(s.tok);
    backend_destroy(s.be);
    if (s.model_loaded)
        model_free(&s.model);
    daemon_options_free(&s.o);
    if (is_query && exit_code == 0)
        sr_log(SR_LOG_INFO, "stopped");
    return exit_code;
}

int server_main(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            daemon_options_usage();
            return 0;
        }
    signal_state sig;
    if (signal_state_start(&sig) != 0) {
        fprintf(stderr, "starrelayd: %s\n", sr_error_get());
        return 1;
    }
    int rc = 1;
    sr_transport *tr = transport_create_for_launch();
    if (!tr) {
        fprintf(stderr, "starrelayd: %s\n", sr_error_get());
    } else {
        rc = serve_on_rank(tr, &sig, argc, argv);
        transport_destroy(tr);
    }
    signal_state_stop(&sig);
    return rc;
}
