#include "daemon/metrics_http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

#ifdef SR_HAVE_MHD

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <microhttpd.h>

struct sr_metrics_http {
    struct MHD_Daemon *d;
    int fd;
    sr_metrics *m;
    pthread_mutex_t mu;
    sr_engine *engine;
};

static enum MHD_Result reply(struct MHD_Connection *c, unsigned code, const char *type,
                             char *body, size_t len)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ok = MHD_queue_response(c, code, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)version;
    (void)upload_data;
    sr_metrics_http *h = cls;
    /* Reject bodies: the first call of a request only sets up. */
    if (!*con_cls) {
        *con_cls = h;
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, "GET") && strcmp(method, "HEAD"))
        return reply(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", strdup("GET /metrics\n"), 13);
    if (strcmp(url, "/metrics") && strcmp(url, "/"))
        return reply(c, MHD_HTTP_NOT_FOUND, "text/plain", strdup("GET /metrics\n"), 13);
    pthread_mutex_lock(&h->mu);
    sr_engine *e = h->engine;
    pthread_mutex_unlock(&h->mu);
    size_t len = 0;
    char *text = metrics_scrape(h->m, e, &len);
    if (!text)
        return reply(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain", strdup("out of memory\n"),
                     14);
    return reply(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", text, len);
}

/* Binds and listens ourselves rather than leaving it to the library, so a
 * taken port gives an error that names the address and errno. */
static int bind_listen(const char *listen_addr, int *fd_out, int *port_out)
{
    const char *colon = strrchr(listen_addr, ':');
    if (!colon || colon == listen_addr || !colon[1])
        return sr_error_set("--metrics-listen: expected HOST:PORT, got '%s'", listen_addr);
    char host[256];
    size_t hl = (size_t)(colon - listen_addr);
    if (hl >= sizeof host)
        return sr_error_set("--metrics-listen: host too long in '%s'", listen_addr);
    memcpy(host, listen_addr, hl);
    host[hl] = '\0';
    /* [::1]:9090 */
    char *h = host;
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h[hl - 1] = '\0';
        h++;
    }
    struct addrinfo hints, *ai = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int g = getaddrinfo(h, colon + 1, &hints, &ai);
    if (g != 0)
        return sr_error_set("--metrics-listen %s: %s", listen_addr, gai_strerror(g));
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        freeaddrinfo(ai);
        return sr_error_set("--metrics-listen %s: socket: %s", listen_addr, strerror(errno));
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0) {
        int err = errno;
        freeaddrinfo(ai);
        close(fd);
        return sr_error_set("--metrics-listen %s: cannot listen: %s", listen_addr, strerror(err));
    }
    freeaddrinfo(ai);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int port = 0;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
        char serv[16];
        if (getnameinfo((struct sockaddr *)&ss, sl, NULL, 0, serv, sizeof serv,
                        NI_NUMERICSERV) == 0)
            port = atoi(serv);
    }
    *fd_out = fd;
    *port_out = port;
    return 0;
}

sr_metrics_http *metrics_http_start(const char *listen_addr, sr_metrics *m, int *port)
{
    sr_metrics_http *h = calloc(1, sizeof *h);
    if (!h) {
        sr_error_set("out of memory");
        return NULL;
    }
    h->m = m;
    h->fd = -1;
    pthread_mutex_init(&h->mu, NULL);
    int p = 0;
    if (bind_listen(listen_addr, &h->fd, &p) != 0) {
        pthread_mutex_destroy(&h->mu);
        free(h);
        return NULL;
    }
    /* One polling thread is plenty for scrapes every few seconds; a slow
     * scrape (the engine answers between steps) only delays the next. */
    h->d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, on_request, h,
                            MHD_OPTION_LISTEN_SOCKET, (MHD_socket)h->fd,
                            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)30, MHD_OPTION_END);
    if (!h->d) {
        sr_error_set("--metrics-listen %s: cannot start the HTTP server", listen_addr);
        close(h->fd);
        pthread_mutex_destroy(&h->mu);
        free(h);
        return NULL;
    }
    if (port)
        *port = p;
    return h;
}

void metrics_http_set_engine(sr_metrics_http *h, sr_engine *engine)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->mu);
    h->engine = engine;
    pthread_mutex_unlock(&h->mu);
}

void metrics_http_stop(sr_metrics_http *h)
{
    if (!h)
        return;
    /* Also closes the listen socket given to it. */
    MHD_stop_daemon(h->d);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

#else /* !SR_HAVE_MHD */

sr_metrics_http *metrics_http_start(const char *listen_addr, sr_metrics *m, int *port)
{
    (void)m;
    (void)port;
    sr_error_set("--metrics-listen %s: starrelayd was built without libmicrohttpd "
                 "(install libmicrohttpd-dev and rebuild)",
                 listen_addr);
    return NULL;
}

void metrics_http_set_engine(sr_metrics_http *h, sr_engine *engine)
{
    (void)h;
    (void)engine;
}

void metrics_http_stop(sr_metrics_http *h)
{
    (void)h;
}

#endif
