/*
 * comm.h — cpattn's communication layer: communicator duplication with
 * MPI_ERRORS_RETURN, and non-blocking point-to-point transfers that are
 * progressed while kernels run.  It knows nothing about attention.
 *
 * Open MPI over shared memory moves a non-blocking message only while some
 * MPI call runs on the process (measured here: a 64 MiB transfer posted
 * before 200 ms of compute still costs ~18 ms at MPI_Wait).  So the
 * transfers live in a cpa_xfer set whose cpa_xfer_progress() the kernels
 * call between tiles (through the kernel's progress callback): MPI_Testall
 * every few hundred microseconds keeps the wire busy during compute, and
 * the wait at the end of a step is close to zero.
 *
 * Every wait here is bounded (the watchdog, cpa_comm_wait in cpattn.h).
 */
#ifndef CPATTN_COMM_H
#define CPATTN_COMM_H

#include "internal.h"

#include <mpi.h>

#define CPA_XFER_SLOTS 8 /* transfers in flight at once (each is a send + a receive) */

typedef struct cpa_xfer {
    MPI_Request req[2 * CPA_XFER_SLOTS]; /* [2*h] receive, [2*h+1] send of handle h */
    int busy[CPA_XFER_SLOTS];
    int peer_from[CPA_XFER_SLOTS], peer_to[CPA_XFER_SLOTS]; /* -1: no such side */
    const char *what[CPA_XFER_SLOTS]; /* names the transfer in a timeout message */
    char context[96]; /* where the caller is ("ring forward, step 2 of 4"), for messages */
    double wait_s;     /* time blocked in cpa_xfer_wait since the last reset */
    double bytes_sent; /* bytes posted for sending since the last reset */
    /* Tracing (src/core/trace.h), filled only while recording: when slot h
     * was posted (0: not traced), when each request was seen complete (0:
     * not yet), what it carries and its peer in MPI_COMM_WORLD's numbering;
     * [2h] the receive, [2h+1] the send, as in req. */
    int64_t trace_post[CPA_XFER_SLOTS];
    int64_t trace_done[2 * CPA_XFER_SLOTS];
    double trace_bytes[2 * CPA_XFER_SLOTS];
    int trace_peer[2 * CPA_XFER_SLOTS];
} cpa_xfer;

void cpa_xfer_init(cpa_xfer *x);
void cpa_xfer_reset_counters(cpa_xfer *x);

/* Post one transfer: MPI_Irecv of `recv_count` floats from `src` into
 * recvbuf on recv_comm, then MPI_Isend of `send_count` floats of sendbuf to
 * `dest` on send_comm (receive first, so a matching send never waits for a
 * receive to appear).  The counts differ where ranks hold different row
 * counts; each must equal what its peer sends or receives.  Either side may
 * be skipped with a NULL buffer.  *handle identifies the pair for
 * cpa_xfer_wait. */
cpa_status cpa_xfer_post(cpa_xfer *x, const float *sendbuf, int64_t send_count, int dest,
                         MPI_Comm send_comm, float *recvbuf, int64_t recv_count, int src,
                         MPI_Comm recv_comm, int tag, const char *what, int *handle);

/* Block until both sides of `handle` completed; the time counts as exposed
 * communication.  Bounded by the watchdog (cpa_comm_wait): the message
 * names x->context, the transfer's `what` and both peers. */
cpa_status cpa_xfer_wait(cpa_xfer *x, int handle);

/* Progress every transfer in flight (MPI_Testall).  Signature of the
 * kernels' progress callback; `arg` is the cpa_xfer. */
void cpa_xfer_progress(void *arg);

/* Cancel-free cleanup after an error: wait for whatever is in flight. */
void cpa_xfer_drain(cpa_xfer *x);

/* `count` floats as MPI can take them: MPI_FLOAT and *n = count when it
 * fits an int, else a committed derived type covering them all and *n = 1
 * (the caller frees it with MPI_Type_free; allowed while transfers are
 * pending).  So no transfer is limited to 2^31 floats. */
cpa_status cpa_comm_float_type(int64_t count, MPI_Datatype *type, int *n);

/* Test hook: counts above n take the derived-type path (0: INT_MAX). */
void cpa_debug_set_max_mpi_count(int64_t n);
/* The largest count one MPI call is given (INT_MAX, or the test hook's n):
 * collectives that reduce are cut into pieces of at most this many. */
int64_t cpa_comm_max_count(void);

/* MPI_Comm_dup with MPI_ERRORS_RETURN set on the copy. */
cpa_status cpa_comm_dup(MPI_Comm comm, MPI_Comm *out);

/* Turn an MPI return code into a cpa_status with the MPI error string. */
cpa_status cpa_mpi_error(int rc, const char *what);

double cpa_wtime(void);

#endif /* CPATTN_COMM_H */
