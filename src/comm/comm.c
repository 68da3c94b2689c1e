/*
 * comm.c — communicator duplication, the progressed transfer set (see
 * comm.h for why progress has to be driven by hand), and the watchdog:
 * every wait is a test loop with a deadline (cpa_comm_wait).
 */
#include "comm.h"
#include "trace.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the watchdog ------------------------------------------------------------ */

static double comm_timeout = 600.0; /* seconds; 0: no bound */
static void (*timeout_handler)(const char *, void *);
static void *timeout_arg;

void cpa_set_comm_timeout(double seconds) { comm_timeout = seconds > 0 ? seconds : 0.0; }
double cpa_comm_timeout(void) { return comm_timeout; }

void cpa_set_comm_timeout_handler(void (*handler)(const char *message, void *arg), void *arg)
{
    timeout_handler = handler;
    timeout_arg = arg;
}

/* The waits of one operation under the deadline; `what` is formatted only
 * on expiry. */
static cpa_status wait_bounded(int n, MPI_Request *reqs, const char *what, va_list ap)
{
    const double t0 = MPI_Wtime();
    for (;;) {
        int done = 0;
        int rc = MPI_Testall(n, reqs, &done, MPI_STATUSES_IGNORE);
        if (rc != MPI_SUCCESS)
            return cpa_mpi_error(rc, "MPI_Testall");
        if (done)
            return CPA_OK;
        if (comm_timeout > 0 && MPI_Wtime() - t0 > comm_timeout)
            break;
    }
    char op[512];
    vsnprintf(op, sizeof op, what, ap);
    int rank = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    cpa_status st = cpa_error(CPA_ERR_TIMEOUT,
                              "rank %d: %s did not complete within %g s (a peer died or is "
                              "stuck; --comm-timeout sets the bound)", rank, op, comm_timeout);
    if (timeout_handler)
        timeout_handler(cpa_last_error(), timeout_arg);
    return st;
}

cpa_status cpa_comm_wait(int n, MPI_Request *reqs, const char *what, ...)
{
    va_list ap;
    va_start(ap, what);
    cpa_status st = wait_bounded(n, reqs, what, ap);
    va_end(ap);
    return st;
}

cpa_status cpa_comm_allreduce(void *buf, int64_t count, MPI_Datatype type, MPI_Op op,
                              MPI_Comm comm, const char *what)
{
    int size = 0;
    MPI_Type_size(type, &size);
    const int64_t trace_t = cpa_trace_t0();
    const int64_t chunk = (int64_t)1 << 30; /* well inside MPI's int count */
    for (int64_t off = 0; off < count; off += chunk) {
        int n = (int)(count - off < chunk ? count - off : chunk);
        MPI_Request req;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * size, n, type, op, comm, &req);
        if (rc != MPI_SUCCESS)
            return cpa_mpi_error(rc, "MPI_Iallreduce");
        CPA_TRY(cpa_comm_wait(1, &req, "%s (all-reduce of %lld elements from offset %lld)", what,
                              (long long)n, (long long)off));
    }
    CPA_TRACE_END(trace_t, "all-reduce", CPA_TRACE_COLLECTIVE, CPA_TRACE_LANE_MAIN,
                  {"bytes", (double)count * size});
    return CPA_OK;
}

cpa_status cpa_comm_bcast(void *buf, int count, MPI_Datatype type, int root, MPI_Comm comm,
                          const char *what)
{
    MPI_Request req;
    int rc = MPI_Ibcast(buf, count, type, root, comm, &req);
    if (rc != MPI_SUCCESS)
        return cpa_mpi_error(rc, "MPI_Ibcast");
    return cpa_comm_wait(1, &req, "%s (broadcast from rank %d)", what, root);
}

cpa_status cpa_comm_agree(MPI_Comm comm, int *code, char *msg, size_t cap, int *who)
{
    int rank = 0, size = 1;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    int first = *code ? rank : INT_MAX;
    *who = -1;
    if (size > 1)
        CPA_TRY(cpa_comm_allreduce(&first, 1, MPI_INT, MPI_MIN, comm, "the ranks' agreement"));
    if (first == INT_MAX)
        return CPA_OK;
    *who = first;
    if (size == 1 || cap == 0)
        return CPA_OK;
    /* The failing rank's code travels in front of its message. */
    char *both = malloc(sizeof(int) + cap);
    if (!both)
        return cpa_error(CPA_ERR_NOMEM, "the ranks' agreement: %zu bytes", sizeof(int) + cap);
    memcpy(both, code, sizeof(int));
    memcpy(both + sizeof(int), msg, cap);
    cpa_status st = cap + sizeof(int) > (size_t)INT_MAX
                        ? cpa_error(CPA_ERR_ARG, "the ranks' agreement: a message of %zu bytes", cap)
                        : cpa_comm_bcast(both, (int)(sizeof(int) + cap), MPI_BYTE, first, comm,
                                         "the failing rank's message");
    if (st == CPA_OK) {
        memcpy(code, both, sizeof(int));
        memcpy(msg, both + sizeof(int), cap);
        msg[cap - 1] = '\0';
    }
    free(both);
    return st;
}

/* ---- counts beyond MPI's int ------------------------------------------------ */

/* The largest count passed to MPI as is; beyond it a derived type covers
 * the floats.  A variable so that tests can lower it and exercise that
 * path with small buffers. */
static int64_t max_int_count = INT_MAX;
void cpa_debug_set_max_mpi_count(int64_t n) { max_int_count = n > 0 ? n : INT_MAX; }
int64_t cpa_comm_max_count(void) { return max_int_count; }

cpa_status cpa_comm_float_type(int64_t count, MPI_Datatype *type, int *n)
{
    if (count < 0)
        return cpa_error(CPA_ERR_ARG, "a transfer of %lld floats", (long long)count);
    if (count <= max_int_count) {
        *type = MPI_FLOAT;
        *n = (int)count;
        return CPA_OK;
    }
    /* count = q·block + r floats as one element: q blocks of `block`, then r. */
    const int64_t block = max_int_count < ((int64_t)1 << 20) ? max_int_count : (int64_t)1 << 20;
    const int64_t q = count / block, r = count % block;
    if (q > INT_MAX)
        return cpa_error(CPA_ERR_ARG, "a transfer of %lld floats is too large even in blocks",
                         (long long)count);
    MPI_Datatype blk;
    int rc = MPI_Type_contiguous((int)block, MPI_FLOAT, &blk);
    int lens[2] = {(int)q, (int)r};
    MPI_Aint disp[2] = {0, (MPI_Aint)(q * block * (int64_t)sizeof(float))};
    MPI_Datatype types[2] = {blk, MPI_FLOAT};
    if (rc == MPI_SUCCESS)
        rc = MPI_Type_create_struct(r ? 2 : 1, lens, disp, types, type);
    if (rc == MPI_SUCCESS)
        rc = MPI_Type_commit(type);
    MPI_Type_free(&blk);
    if (rc != MPI_SUCCESS)
        return cpa_mpi_error(rc, "MPI_Type_create_struct (a large transfer)");
    *n = 1;
    return CPA_OK;
}

/* ---- communicators and transfers --------------------------------------------- */

double cpa_wtime(void) { return MPI_Wtime(); }

cpa_status cpa_mpi_error(int rc, const char *what)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "error code %d", rc);
    return cpa_error(CPA_ERR_MPI, "%s failed: %s", what, msg);
}

cpa_status cpa_comm_dup(MPI_Comm comm, MPI_Comm *out)
{
    int rc = MPI_Comm_dup(comm, out);
    if (rc != MPI_SUCCESS)
        return cpa_mpi_error(rc, "MPI_Comm_dup");
    rc = MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN);
    if (rc != MPI_SUCCESS) {
        MPI_Comm_free(out);
        return cpa_mpi_error(rc, "MPI_Comm_set_errhandler");
    }
    return CPA_OK;
}

/* ---- tracing of transfers (only while recording: see trace.h) ------------------ */

/* `peer` of `comm` in MPI_COMM_WORLD's numbering, so that every event
 * names ranks the way the trace's processes are numbered. */
static int world_rank_of(MPI_Comm comm, int peer)
{
    MPI_Group g, wg;
    int out = peer;
    if (comm == MPI_COMM_WORLD || MPI_Comm_group(comm, &g) != MPI_SUCCESS)
        return peer;
    if (MPI_Comm_group(MPI_COMM_WORLD, &wg) == MPI_SUCCESS) {
        if (MPI_Group_translate_ranks(g, 1, &peer, wg, &out) != MPI_SUCCESS)
            out = peer;
        MPI_Group_free(&wg);
    }
    MPI_Group_free(&g);
    return out;
}

static void trace_posted(cpa_xfer *x, int h, int64_t t, double recv_bytes, MPI_Comm recv_comm,
                         double send_bytes, MPI_Comm send_comm)
{
    x->trace_post[h] = t;
    x->trace_done[2 * h] = x->trace_done[2 * h + 1] = 0;
    x->trace_bytes[2 * h] = recv_bytes;
    x->trace_bytes[2 * h + 1] = send_bytes;
    x->trace_peer[2 * h] = x->peer_from[h] >= 0 ? world_rank_of(recv_comm, x->peer_from[h]) : -1;
    x->trace_peer[2 * h + 1] = x->peer_to[h] >= 0 ? world_rank_of(send_comm, x->peer_to[h]) : -1;
}

/* MPI_Testsome over every request: the same progress as MPI_Testall, and
 * the time each request is first seen complete. */
static void trace_progress(cpa_xfer *x)
{
    int idx[2 * CPA_XFER_SLOTS], n = 0;
    if (MPI_Testsome(2 * CPA_XFER_SLOTS, x->req, &n, idx, MPI_STATUSES_IGNORE) != MPI_SUCCESS ||
        n == MPI_UNDEFINED)
        return;
    const int64_t now = cpa_trace_clock();
    for (int i = 0; i < n; ++i)
        if (!x->trace_done[idx[i]])
            x->trace_done[idx[i]] = now;
}

/* After the wait on slot h that began at `t_wait`: the wait (exposed
 * communication, on the main track), then the receive and the send, each
 * from its post to its completion (a request not seen complete earlier
 * completed during the wait), on the slot's own tracks. */
static void trace_completed(cpa_xfer *x, int h, int64_t t_wait)
{
    const int64_t now = cpa_trace_clock();
    const int traced = x->trace_post[h] != 0; /* else the peers are the group's ranks */
    CPA_TRACE_END(t_wait, "wait", CPA_TRACE_WAIT, CPA_TRACE_LANE_MAIN,
                  {"recv_from", x->peer_from[h] >= 0 && traced ? x->trace_peer[2 * h]
                                                               : x->peer_from[h]},
                  {"send_to", x->peer_to[h] >= 0 && traced ? x->trace_peer[2 * h + 1]
                                                           : x->peer_to[h]});
    if (!x->trace_post[h])
        return; /* posted before recording started */
    for (int side = 0; side < 2; ++side) {
        const int r = 2 * h + side;
        if ((side == 0 ? x->peer_from[h] : x->peer_to[h]) < 0)
            continue;
        const int64_t done = x->trace_done[r] ? x->trace_done[r] : now;
        const cpa_trace_arg args[2] = {{"peer", x->trace_peer[r]}, {"bytes", x->trace_bytes[r]}};
        cpa_trace_record(x->trace_post[h], done, x->what[h] ? x->what[h] : "transfer",
                         side == 0 ? CPA_TRACE_RECV : CPA_TRACE_SEND,
                         CPA_TRACE_LANE_XFER + r, args, 2);
    }
    x->trace_post[h] = 0;
}

void cpa_xfer_init(cpa_xfer *x)
{
    memset(x, 0, sizeof *x);
    for (int i = 0; i < 2 * CPA_XFER_SLOTS; ++i)
        x->req[i] = MPI_REQUEST_NULL;
}

void cpa_xfer_reset_counters(cpa_xfer *x)
{
    x->wait_s = 0.0;
    x->bytes_sent = 0.0;
}

cpa_status cpa_xfer_post(cpa_xfer *x, const float *sendbuf, int64_t send_count, int dest,
                         MPI_Comm send_comm, float *recvbuf, int64_t recv_count, int src,
                         MPI_Comm recv_comm, int tag, const char *what, int *handle)
{
    MPI_Datatype stype = MPI_FLOAT, rtype = MPI_FLOAT;
    int sn = 0, rn = 0;
    if (sendbuf)
        CPA_TRY(cpa_comm_float_type(send_count, &stype, &sn));
    if (recvbuf) {
        cpa_status st = cpa_comm_float_type(recv_count, &rtype, &rn);
        if (st != CPA_OK) {
            if (stype != MPI_FLOAT)
                MPI_Type_free(&stype);
            return st;
        }
    }
    int h = 0;
    while (h < CPA_XFER_SLOTS && x->busy[h])
        ++h;
    int rc = MPI_SUCCESS;
    if (h < CPA_XFER_SLOTS && recvbuf)
        rc = MPI_Irecv(recvbuf, rn, rtype, src, tag, recv_comm, &x->req[2 * h]);
    if (h < CPA_XFER_SLOTS && rc == MPI_SUCCESS && sendbuf) {
        rc = MPI_Isend(sendbuf, sn, stype, dest, tag, send_comm, &x->req[2 * h + 1]);
        if (rc == MPI_SUCCESS)
            x->bytes_sent += (double)send_count * sizeof(float);
    }
    /* A derived type may be freed while the transfers using it are pending. */
    if (stype != MPI_FLOAT)
        MPI_Type_free(&stype);
    if (rtype != MPI_FLOAT)
        MPI_Type_free(&rtype);
    if (h == CPA_XFER_SLOTS)
        return cpa_error(CPA_ERR_INTERNAL, "more than %d transfers in flight", CPA_XFER_SLOTS);
    if (rc != MPI_SUCCESS) {
        cpa_xfer_drain(x);
        return cpa_mpi_error(rc, recvbuf ? "MPI_Irecv / MPI_Isend" : "MPI_Isend");
    }
    x->busy[h] = 1;
    x->peer_from[h] = recvbuf ? src : -1;
    x->peer_to[h] = sendbuf ? dest : -1;
    x->what[h] = what;
    *handle = h;
    const int64_t trace_t = cpa_trace_t0();
    if (trace_t)
        trace_posted(x, h, trace_t, recvbuf ? (double)recv_count * sizeof(float) : 0.0,
                     recv_comm, sendbuf ? (double)send_count * sizeof(float) : 0.0, send_comm);
    return CPA_OK;
}

cpa_status cpa_xfer_wait(cpa_xfer *x, int handle)
{
    double t0 = MPI_Wtime();
    const int64_t trace_t = cpa_trace_t0();
    if (trace_t)
        trace_progress(x); /* stamp what completed before the wait */
    cpa_status st = cpa_comm_wait(2, &x->req[2 * handle], "%s%s%s: receive from rank %d / send to "
                                  "rank %d (ranks in the plan's group)", x->context,
                                  x->context[0] ? ", " : "", x->what[handle] ? x->what[handle] : "transfer",
                                  x->peer_from[handle], x->peer_to[handle]);
    x->wait_s += MPI_Wtime() - t0;
    if (trace_t)
        trace_completed(x, handle, trace_t);
    x->busy[handle] = 0;
    return st;
}

void cpa_xfer_progress(void *arg)
{
    cpa_xfer *x = arg;
    int done;
    if (atomic_load_explicit(&cpa_trace_on_, memory_order_relaxed)) {
        trace_progress(x); /* the same progress, noting when each request completed */
        return;
    }
    /* Completed requests become MPI_REQUEST_NULL, which later waits accept. */
    MPI_Testall(2 * CPA_XFER_SLOTS, x->req, &done, MPI_STATUSES_IGNORE);
}

void cpa_xfer_drain(cpa_xfer *x)
{
    /* After an error: bounded like every wait (a peer may be gone). */
    cpa_comm_wait(2 * CPA_XFER_SLOTS, x->req, "%s%scleanup of the transfers in flight",
                  x->context, x->context[0] ? ", " : "");
    for (int h = 0; h < CPA_XFER_SLOTS; ++h)
        x->busy[h] = 0, x->trace_post[h] = 0; /* nothing of a failed step is traced */
}
