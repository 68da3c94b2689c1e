/*
 * comm.c — communicator duplication and the progressed transfer set (see
 * comm.h for why progress has to be driven by hand).
 */
#include "comm.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

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

cpa_status cpa_xfer_post(cpa_xfer *x, const float *sendbuf, int dest, MPI_Comm send_comm,
                         float *recvbuf, int src, MPI_Comm recv_comm, int64_t count, int tag,
                         int *handle)
{
    if (count < 0 || count > INT_MAX)
        return cpa_error(CPA_ERR_ARG, "a transfer of %lld floats exceeds MPI's int count "
                         "(split the sequence over more ranks)", (long long)count);
    int h = 0;
    while (h < CPA_XFER_SLOTS && x->busy[h])
        ++h;
    if (h == CPA_XFER_SLOTS)
        return cpa_error(CPA_ERR_INTERNAL, "more than %d transfers in flight", CPA_XFER_SLOTS);
    int rc;
    if (recvbuf) {
        rc = MPI_Irecv(recvbuf, (int)count, MPI_FLOAT, src, tag, recv_comm, &x->req[2 * h]);
        if (rc != MPI_SUCCESS)
            return cpa_mpi_error(rc, "MPI_Irecv");
    }
    if (sendbuf) {
        rc = MPI_Isend(sendbuf, (int)count, MPI_FLOAT, dest, tag, send_comm, &x->req[2 * h + 1]);
        if (rc != MPI_SUCCESS) {
            cpa_xfer_drain(x);
            return cpa_mpi_error(rc, "MPI_Isend");
        }
        x->bytes_sent += (double)count * sizeof(float);
    }
    x->busy[h] = 1;
    *handle = h;
    return CPA_OK;
}

cpa_status cpa_xfer_wait(cpa_xfer *x, int handle)
{
    double t0 = MPI_Wtime();
    int rc = MPI_Waitall(2, &x->req[2 * handle], MPI_STATUSES_IGNORE);
    x->wait_s += MPI_Wtime() - t0;
    x->busy[handle] = 0;
    if (rc != MPI_SUCCESS)
        return cpa_mpi_error(rc, "MPI_Waitall");
    return CPA_OK;
}

void cpa_xfer_progress(void *arg)
{
    cpa_xfer *x = arg;
    int done;
    /* Completed requests become MPI_REQUEST_NULL, which later waits accept. */
    MPI_Testall(2 * CPA_XFER_SLOTS, x->req, &done, MPI_STATUSES_IGNORE);
}

void cpa_xfer_drain(cpa_xfer *x)
{
    MPI_Waitall(2 * CPA_XFER_SLOTS, x->req, MPI_STATUSES_IGNORE);
    for (int h = 0; h < CPA_XFER_SLOTS; ++h)
        x->busy[h] = 0;
}
