/*
 * trace_write.c — cpa_trace_write: the events every rank of a communicator
 * recorded (src/core/trace.c) as one Chrome / Perfetto trace-event JSON
 * file, written by rank 0.
 *
 * How.  On a duplicate of the caller's communicator, with recording paused
 * (the writer's own collectives are not events):
 *   1. every rank's figures (events, dropped, capacity, host) go to rank 0;
 *      the clocks are aligned (one host: CLOCK_MONOTONIC is shared, offset
 *      0; several: a ping-pong with rank 0, the round of least delay);
 *      the earliest event over all ranks becomes time 0;
 *   2. rank 0 creates a temporary next to the path (atomic_file.h) and
 *      writes the header; every rank learns whether that worked;
 *   3. rank 0 writes its own events, then receives each other rank's in
 *      pieces of at most CHUNK_BYTES of JSON text that rank formatted
 *      itself (its length first; length 0 ends that rank), writing them in
 *      turn — after a write error it keeps receiving, so no sender hangs;
 *   4. every rank agrees on the outcome; only if all went well does rank 0
 *      rename the temporary into place (and the ranks agree on that too).
 * So the file is the old one or the complete new one, and every rank
 * returns the same status and message.  Every wait is bounded by the
 * watchdog (cpa_comm_wait).  Each rank lists its events in start order, an
 * enclosing event before the events it holds (the recorder appends an
 * event when it ends, so a parent would otherwise follow its children).
 *
 * What it is not: a general JSON writer.  Each event is one line:
 *   {"name":..,"cat":..,"ph":"X","pid":RANK,"tid":LANE,"ts":US,"dur":US,"args":{..}}
 * with ts and dur in microseconds to the nanosecond (three decimals);
 * metadata ("ph":"M") lines name the processes "rank N (host)" and the
 * tracks.
 */
#include "comm.h"
#include "trace.h"
#include "atomic_file.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_BYTES ((size_t)4 << 20) /* JSON text per message */
#define LINE_CAP 2048                 /* one event's line, strings truncated to fit */
#define HOST_CAP 64
#define SYNC_ROUNDS 8                 /* ping-pongs per rank when clocks differ */

enum { TAG_SYNC = 7101, TAG_LEN = 7102, TAG_DATA = 7103 };

/* What rank 0 learns of each rank before writing. */
typedef struct rank_info {
    int64_t count, dropped, capacity;
    char host[HOST_CAP];
} rank_info;

/* ---- small bounded MPI helpers -------------------------------------------------- */

static cpa_status xsend(const void *buf, int n, MPI_Datatype t, int dest, int tag, MPI_Comm c,
                        const char *what)
{
    MPI_Request r;
    int rc = MPI_Isend((void *)buf, n, t, dest, tag, c, &r);
    if (rc != MPI_SUCCESS)
        return cpa_mpi_error(rc, "MPI_Isend (trace)");
    return cpa_comm_wait(1, &r, "the trace: %s (send to rank %d)", what, dest);
}

static cpa_status xrecv(void *buf, int n, MPI_Datatype t, int src, int tag, MPI_Comm c,
                        const char *what)
{
    MPI_Request r;
    int rc = MPI_Irecv(buf, n, t, src, tag, c, &r);
    if (rc != MPI_SUCCESS)
        return cpa_mpi_error(rc, "MPI_Irecv (trace)");
    return cpa_comm_wait(1, &r, "the trace: %s (receive from rank %d)", what, src);
}

/* Every rank gets the status and message of the lowest failing rank. */
static cpa_status agree(MPI_Comm c, cpa_status mine)
{
    int code = (int)mine, who = -1, rank = 0;
    char msg[1024];
    MPI_Comm_rank(c, &rank);
    snprintf(msg, sizeof msg, "%s", mine != CPA_OK ? cpa_last_error() : "");
    CPA_TRY(cpa_comm_agree(c, &code, msg, sizeof msg, &who));
    if (code == CPA_OK)
        return CPA_OK;
    if (who != rank && who != 0)
        return cpa_error((cpa_status)code, "rank %d: %s", who, msg);
    return cpa_error((cpa_status)code, "%s", msg);
}

/* ---- JSON text ------------------------------------------------------------------ */

/* `s` as a JSON string (quotes included) at dst, at most `room` bytes
 * (longer text is cut); returns the bytes written. */
static size_t json_string(char *dst, size_t room, const char *s)
{
    size_t n = 0;
    if (room < 8)
        return 0;
    dst[n++] = '"';
    for (; *s && n + 8 < room; ++s) {
        const unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            dst[n++] = '\\';
            dst[n++] = (char)ch;
        } else if (ch < 0x20 || ch == 0x7f) {
            n += (size_t)snprintf(dst + n, room - n, "\\u%04x", ch);
        } else {
            dst[n++] = (char)ch;
        }
    }
    dst[n++] = '"';
    dst[n] = '\0';
    return n;
}

/* A number as JSON: integers exactly, others to 9 digits, null if not finite. */
static size_t json_number(char *dst, size_t room, double v)
{
    int n;
    if (!isfinite(v))
        n = snprintf(dst, room, "null");
    else if (v == floor(v) && fabs(v) < 9007199254740992.0)
        n = snprintf(dst, room, "%.0f", v);
    else
        n = snprintf(dst, room, "%.9g", v);
    return n > 0 && (size_t)n < room ? (size_t)n : 0;
}

/* Nanoseconds as microseconds with three decimals, exactly. */
static size_t json_micros(char *dst, size_t room, int64_t ns)
{
    const char *sign = ns < 0 ? "-" : "";
    const int64_t a = ns < 0 ? -ns : ns;
    int n = snprintf(dst, room, "%s%lld.%03lld", sign, (long long)(a / 1000),
                     (long long)(a % 1000));
    return n > 0 && (size_t)n < room ? (size_t)n : 0;
}

/* ---- one rank's lines ----------------------------------------------------------- */

/* Formats a rank's metadata lines, then its events, into pieces. */
typedef struct producer {
    cpa_trace_view v;
    const int64_t *order; /* [nready] the complete events, by start (enclosing first) */
    int64_t nready;
    int pid;
    int64_t shift;    /* add to a local timestamp: rank 0's clock, from time 0 */
    int first;        /* the next line is the file's first element (no comma) */
    int meta_done;
    int64_t next;     /* next event index */
    const rank_info *me;
} producer;

static size_t line_start(const producer *p, char *line)
{
    return (size_t)snprintf(line, LINE_CAP, "%s", p->first ? "" : ",\n");
}

/* Metadata: the process name and order, a label if events were dropped,
 * each used track's name and order. */
static size_t metadata(producer *p, char *buf, size_t cap)
{
    size_t n = 0;
    char name[HOST_CAP + 64], esc[2 * (HOST_CAP + 64)], lane[64];
    snprintf(name, sizeof name, "rank %d (%s)", p->pid, p->me->host);
    json_string(esc, sizeof esc, name);
    n += line_start(p, buf + n);
    p->first = 0;
    n += (size_t)snprintf(buf + n, cap - n, "{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":%d,"
                          "\"tid\":0,\"args\":{\"name\":%s}}", p->pid, esc);
    n += (size_t)snprintf(buf + n, cap - n, ",\n{\"name\":\"process_sort_index\",\"ph\":\"M\","
                          "\"pid\":%d,\"tid\":0,\"args\":{\"sort_index\":%d}}", p->pid, p->pid);
    if (p->me->dropped > 0)
        n += (size_t)snprintf(buf + n, cap - n, ",\n{\"name\":\"process_labels\",\"ph\":\"M\","
                              "\"pid\":%d,\"tid\":0,\"args\":{\"labels\":\"%lld events dropped "
                              "(buffer of %lld full)\"}}", p->pid, (long long)p->me->dropped,
                              (long long)p->me->capacity);
    for (int l = 0; l < CPA_TRACE_LANES; ++l) {
        if (!(p->v.lanes >> l & 1) && l != CPA_TRACE_LANE_MAIN)
            continue;
        json_string(esc, sizeof esc, cpa_trace_lane_name(l, lane, sizeof lane));
        n += (size_t)snprintf(buf + n, cap - n, ",\n{\"name\":\"thread_name\",\"ph\":\"M\","
                              "\"pid\":%d,\"tid\":%d,\"args\":{\"name\":%s}}", p->pid, l, esc);
        n += (size_t)snprintf(buf + n, cap - n, ",\n{\"name\":\"thread_sort_index\",\"ph\":\"M\","
                              "\"pid\":%d,\"tid\":%d,\"args\":{\"sort_index\":%d}}", p->pid, l, l);
    }
    return n;
}

static size_t event_line(const producer *p, const cpa_trace_event *e, char *line)
{
    size_t n = line_start(p, line);
    n += (size_t)snprintf(line + n, LINE_CAP - n, "{\"name\":");
    n += json_string(line + n, 512, e->name);
    n += (size_t)snprintf(line + n, LINE_CAP - n, ",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":%d,"
                          "\"tid\":%d,\"ts\":", cpa_trace_kind_name((cpa_trace_kind)e->kind),
                          p->pid, e->lane);
    n += json_micros(line + n, LINE_CAP - n, e->t0 + p->shift);
    n += (size_t)snprintf(line + n, LINE_CAP - n, ",\"dur\":");
    n += json_micros(line + n, LINE_CAP - n, e->t1 - e->t0);
    n += (size_t)snprintf(line + n, LINE_CAP - n, ",\"args\":{");
    for (int a = 0; a < e->nargs; ++a) {
        if (a)
            line[n++] = ',';
        n += json_string(line + n, 128, e->keys[a]);
        line[n++] = ':';
        n += json_number(line + n, 64, e->vals[a]);
    }
    n += (size_t)snprintf(line + n, LINE_CAP - n, "}}");
    return n;
}

/* The next piece of this rank's text into buf (cap >= 64 KiB); 0 when done. */
static size_t produce(producer *p, char *buf, size_t cap)
{
    size_t n = 0;
    if (!p->meta_done) {
        n = metadata(p, buf, cap);
        p->meta_done = 1;
    }
    char line[LINE_CAP];
    while (p->next < p->nready) {
        const cpa_trace_event *e = &p->v.events[p->order[p->next]];
        const size_t len = event_line(p, e, line);
        if (n + len > cap)
            break;
        memcpy(buf + n, line, len);
        n += len;
        ++p->next;
    }
    return n;
}

/* Events in start order, an enclosing event before what it holds (the
 * recorder appends at the end of an event, so a parent follows its
 * children; readers such as chrome://tracing and Perfetto want parents
 * first when start times tie). */
static const cpa_trace_event *sort_base;

static int by_start(const void *a, const void *b)
{
    const int64_t i = *(const int64_t *)a, j = *(const int64_t *)b;
    const cpa_trace_event *x = &sort_base[i], *y = &sort_base[j];
    if (x->t0 != y->t0)
        return x->t0 < y->t0 ? -1 : 1;
    const int64_t dx = x->t1 - x->t0, dy = y->t1 - y->t0;
    if (dx != dy)
        return dx > dy ? -1 : 1;
    return i < j ? -1 : i > j;
}

/* The indices of the complete events of `v` (a slot still being filled by
 * another thread is left out), sorted by_start; NULL if allocation failed. */
static int64_t *sorted_events(const cpa_trace_view *v, int64_t *n)
{
    int64_t *order = malloc(sizeof(int64_t) * (size_t)(v->count > 0 ? v->count : 1));
    *n = 0;
    if (!order)
        return NULL;
    for (int64_t i = 0; i < v->count; ++i)
        if (atomic_load_explicit(&((cpa_trace_event *)&v->events[i])->ready, memory_order_acquire))
            order[(*n)++] = i;
    sort_base = v->events;
    qsort(order, (size_t)*n, sizeof *order, by_start);
    return order;
}

/* ---- clocks --------------------------------------------------------------------- */

/* This rank's offset to rank 0's clock, estimated by ping-pongs (rank 0
 * answers each rank in turn): the round with the least delay, its
 * midpoint matched with rank 0's reading. */
static cpa_status clock_offset(MPI_Comm c, int rank, int size, int64_t *offset)
{
    *offset = 0;
    for (int r = 1; r < size; ++r) {
        if (rank == 0) {
            for (int k = 0; k < SYNC_ROUNDS; ++k) {
                int64_t ping, now;
                CPA_TRY(xrecv(&ping, 1, MPI_INT64_T, r, TAG_SYNC, c, "clock alignment"));
                now = cpa_trace_clock();
                CPA_TRY(xsend(&now, 1, MPI_INT64_T, r, TAG_SYNC, c, "clock alignment"));
            }
        } else if (rank == r) {
            int64_t best = INT64_MAX;
            for (int k = 0; k < SYNC_ROUNDS; ++k) {
                int64_t ta = cpa_trace_clock(), t0;
                CPA_TRY(xsend(&ta, 1, MPI_INT64_T, 0, TAG_SYNC, c, "clock alignment"));
                CPA_TRY(xrecv(&t0, 1, MPI_INT64_T, 0, TAG_SYNC, c, "clock alignment"));
                const int64_t tb = cpa_trace_clock();
                if (tb - ta < best) {
                    best = tb - ta;
                    *offset = t0 - (ta + (tb - ta) / 2);
                }
            }
        }
    }
    return CPA_OK;
}

/* ---- rank 0's file -------------------------------------------------------------- */

typedef struct out_file {
    int fd;
    char tmp[4352];
    const char *path;
    cpa_status st; /* the first write error; later writes are skipped */
} out_file;

static void out_write(out_file *f, const char *buf, size_t n)
{
    if (f->st != CPA_OK || n == 0)
        return;
    if (!cpa_write_full(f->fd, buf, n)) {
        char why[128];
        f->st = cpa_error(CPA_ERR_IO, "trace %s: cannot write the temporary file %s: %s",
                          f->path, f->tmp, cpa_errno_text(errno, why, sizeof why));
    }
}

/* The header: what the file is, the ranks' figures, then "traceEvents":[. */
static void out_header(out_file *f, const rank_info *all, int size, int same_host, char *buf,
                       size_t cap)
{
    int64_t dropped = 0;
    for (int r = 0; r < size; ++r)
        dropped += all[r].dropped;
    size_t n = (size_t)snprintf(buf, cap, "{\"displayTimeUnit\":\"ms\",\"otherData\":{"
                                "\"generator\":\"cpattn %s\",\"ranks\":%d,\"clock\":\"%s\","
                                "\"dropped_events\":%lld", CPA_VERSION_STRING, size,
                                same_host ? "CLOCK_MONOTONIC of one host"
                                          : "CLOCK_MONOTONIC aligned to rank 0 by ping-pong",
                                (long long)dropped);
    static const char *const keys[3] = {"events_by_rank", "dropped_by_rank", "capacity_by_rank"};
    for (int k = 0; k < 3; ++k) {
        n += (size_t)snprintf(buf + n, cap - n, ",\"%s\":[", keys[k]);
        for (int r = 0; r < size && n + 32 < cap; ++r) {
            const int64_t v = k == 0 ? all[r].count : k == 1 ? all[r].dropped : all[r].capacity;
            n += (size_t)snprintf(buf + n, cap - n, "%s%lld", r ? "," : "", (long long)v);
        }
        n += (size_t)snprintf(buf + n, cap - n, "]");
    }
    n += (size_t)snprintf(buf + n, cap - n, "},\n\"traceEvents\":[\n");
    out_write(f, buf, n < cap ? n : cap);
}

/* ---- the collective write ------------------------------------------------------- */

/* Steps 1-4 of the top of the file, for the events of `v` in `order`. */
static cpa_status write_all(MPI_Comm c, int rank, int size, const char *path, char *buf,
                            cpa_trace_view v, const int64_t *order, int64_t nready)
{
    /* 1. Figures, clocks, time 0. */
    rank_info me;
    memset(&me, 0, sizeof me);
    me.count = v.count, me.dropped = v.dropped, me.capacity = v.capacity;
    char host[MPI_MAX_PROCESSOR_NAME];
    int len = 0;
    if (MPI_Get_processor_name(host, &len) != MPI_SUCCESS)
        len = snprintf(host, sizeof host, "?");
    host[len > 0 && len < (int)sizeof host ? len : 0] = '\0';
    memcpy(me.host, host, strnlen(host, sizeof me.host - 1)); /* cut to fit; me is zeroed */
    rank_info *all = rank == 0 ? calloc((size_t)size, sizeof *all) : NULL;
    CPA_TRY(agree(c, rank == 0 && !all ? cpa_error(CPA_ERR_NOMEM, "trace %s: the ranks' figures",
                                                   path) : CPA_OK));
    MPI_Request req;
    int rc = MPI_Igather(&me, (int)sizeof me, MPI_BYTE, all, (int)sizeof me, MPI_BYTE, 0, c, &req);
    cpa_status st = rc == MPI_SUCCESS ? cpa_comm_wait(1, &req, "the trace: the ranks' figures")
                                      : cpa_mpi_error(rc, "MPI_Igather (trace)");
    if (st != CPA_OK) {
        free(all);
        return st;
    }
    /* Test hook: CPATTN_TRACE_CLOCK_SYNC=1 (rank 0's environment) aligns the
     * clocks by ping-pong even on one host, so that path runs in the tests. */
    const char *force = rank == 0 ? getenv("CPATTN_TRACE_CLOCK_SYNC") : NULL;
    int same_host = !(force && !strcmp(force, "1"));
    for (int r = 1; rank == 0 && r < size; ++r)
        same_host &= strcmp(all[r].host, all[0].host) == 0;
    int64_t offset = 0, first = INT64_MAX;
    st = cpa_comm_bcast(&same_host, 1, MPI_INT, 0, c, "the trace's clock alignment");
    if (st == CPA_OK && !same_host)
        st = clock_offset(c, rank, size, &offset);
    if (nready > 0) /* the earliest start: the first in order */
        first = v.events[order[0]].t0 + offset;
    if (st == CPA_OK)
        st = cpa_comm_allreduce(&first, 1, MPI_INT64_T, MPI_MIN, c, "the trace's time 0");
    if (st != CPA_OK) {
        free(all);
        return st;
    }
    if (first == INT64_MAX)
        first = 0; /* no rank recorded anything: the file holds the metadata only */
    producer p = {.v = v, .order = order, .nready = nready, .pid = rank,
                  .shift = offset - first, .first = rank == 0, .me = &me};

    /* 2. Rank 0's temporary and header. */
    out_file f = {.fd = -1, .path = path, .st = CPA_OK};
    if (rank == 0) {
        f.fd = cpa_temp_create(path, f.tmp, sizeof f.tmp);
        if (f.fd < 0) {
            char why[128];
            f.st = cpa_error(CPA_ERR_IO, "trace %s: cannot create a temporary file next to it: %s",
                             path, cpa_errno_text(errno, why, sizeof why));
        } else {
            out_header(&f, all, size, same_host, buf, CHUNK_BYTES);
        }
    }
    free(all);
    st = agree(c, f.st);
    if (st != CPA_OK) {
        if (f.fd >= 0)
            cpa_temp_discard(f.fd, f.tmp);
        return st;
    }

    /* 3. The events: rank 0's own, then each rank's pieces in turn. */
    cpa_status mpi = CPA_OK;
    if (rank == 0) {
        size_t n;
        while ((n = produce(&p, buf, CHUNK_BYTES)) > 0)
            out_write(&f, buf, n);
        for (int r = 1; r < size && mpi == CPA_OK; ++r)
            for (;;) {
                int64_t piece = 0;
                mpi = xrecv(&piece, 1, MPI_INT64_T, r, TAG_LEN, c, "a piece's length");
                if (mpi != CPA_OK || piece <= 0)
                    break;
                if ((size_t)piece > CHUNK_BYTES) {
                    mpi = cpa_error(CPA_ERR_INTERNAL, "trace %s: rank %d sent a piece of %lld "
                                    "bytes (at most %zu)", path, r, (long long)piece, CHUNK_BYTES);
                    break;
                }
                mpi = xrecv(buf, (int)piece, MPI_CHAR, r, TAG_DATA, c, "the events");
                if (mpi != CPA_OK)
                    break;
                out_write(&f, buf, (size_t)piece);
            }
        out_write(&f, "\n]}\n", 4);
    } else {
        for (;;) {
            const int64_t piece = (int64_t)produce(&p, buf, CHUNK_BYTES);
            mpi = xsend(&piece, 1, MPI_INT64_T, 0, TAG_LEN, c, "a piece's length");
            if (mpi != CPA_OK || piece == 0)
                break;
            mpi = xsend(buf, (int)piece, MPI_CHAR, 0, TAG_DATA, c, "the events");
            if (mpi != CPA_OK)
                break;
        }
    }

    /* 4. Agree, then rename on rank 0 only if every rank succeeded. */
    st = agree(c, mpi != CPA_OK ? mpi : f.st);
    if (rank == 0) {
        if (st == CPA_OK)
            f.st = cpa_temp_commit(f.fd, f.tmp, path, "temporary file");
        else
            cpa_temp_discard(f.fd, f.tmp);
    }
    return st != CPA_OK ? st : agree(c, f.st);
}

cpa_status cpa_trace_write(MPI_Comm comm, const char *path)
{
    int rank = 0, size = 1;
    MPI_Comm c;
    CPA_TRY(cpa_comm_dup(comm, &c));
    MPI_Comm_rank(c, &rank);
    MPI_Comm_size(c, &size);
    const int was = cpa_trace_set_paused(1);
    const cpa_trace_view v = cpa_trace_snapshot();
    int64_t nready = 0, *order = sorted_events(&v, &nready);
    char *buf = malloc(CHUNK_BYTES);
    cpa_status st = !path || !*path ? cpa_error(CPA_ERR_ARG, "cpa_trace_write: no path")
                    : !buf || !order
                        ? cpa_error(CPA_ERR_NOMEM, "trace %s: a buffer of %zu bytes and the "
                                    "order of %lld events", path, CHUNK_BYTES, (long long)v.count)
                        : CPA_OK;
    st = agree(c, st);
    if (st == CPA_OK)
        st = write_all(c, rank, size, path, buf, v, order, nready);
    free(order);
    free(buf);
    MPI_Comm_free(&c);
    cpa_trace_set_paused(!was);
    return st;
}
