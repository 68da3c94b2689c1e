/*
 * trace.c — the process-wide trace recorder (trace.h): a buffer of events
 * allocated once by cpa_trace_start, an atomic counter that hands out its
 * slots (lock-free; any thread may record), monotonic timestamps, and the
 * count of events dropped once the buffer is full.
 *
 * It is not the writer: turning the events of every rank into one JSON file
 * needs MPI and lives in src/comm/trace_write.c.  Start and stop are meant
 * to be called by one thread while no plan call runs (they swap the
 * buffer); recording itself is safe from any thread.
 */
#include "trace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

atomic_int cpa_trace_on_;

static cpa_trace_event *trace_buf;  /* [trace_cap] */
static int64_t trace_cap;
static atomic_llong trace_next;     /* slots handed out (may pass trace_cap: dropped) */
static atomic_llong trace_dropped;
static atomic_ullong trace_lanes;   /* bit l: lane l has an event */
static atomic_int trace_warned;     /* the "buffer full" line was printed */
static int trace_started;           /* a buffer is allocated and recording was asked for */

static const char *const kind_names[CPA_TRACE_KIND_COUNT] = {
    "compute", "send", "recv", "wait", "alltoall", "allgather", "collective", "plan", "model",
};

const char *cpa_trace_kind_name(cpa_trace_kind kind)
{
    return (int)kind >= 0 && (int)kind < CPA_TRACE_KIND_COUNT ? kind_names[kind] : "?";
}

int64_t cpa_trace_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + (int64_t)ts.tv_nsec;
}

cpa_status cpa_trace_start(int64_t max_events)
{
    if (max_events < 1 || (uint64_t)max_events > SIZE_MAX / sizeof(cpa_trace_event))
        return cpa_error(CPA_ERR_ARG, "cpa_trace_start: max_events %lld: must be at least 1 "
                         "(and the buffer must fit in memory)", (long long)max_events);
    cpa_trace_stop();
    /* Zeroed by hand (every slot's `ready` starts at 0): writing the pages
     * maps them now, rather than at the first events of a timed call as a
     * lazily mapped calloc would. */
    cpa_trace_event *buf = malloc((size_t)max_events * sizeof *buf);
    if (buf)
        memset(buf, 0, (size_t)max_events * sizeof *buf);
    if (!buf)
        return cpa_error(CPA_ERR_NOMEM, "cpa_trace_start: a buffer of %lld events (%.1f MiB)",
                         (long long)max_events,
                         (double)max_events * sizeof *buf / 1048576.0);
    trace_buf = buf;
    trace_cap = max_events;
    atomic_store(&trace_next, 0);
    atomic_store(&trace_dropped, 0);
    atomic_store(&trace_lanes, 0);
    atomic_store(&trace_warned, 0);
    trace_started = 1;
    atomic_store(&cpa_trace_on_, 1);
    return CPA_OK;
}

void cpa_trace_stop(void)
{
    atomic_store(&cpa_trace_on_, 0);
    trace_started = 0;
    free(trace_buf);
    trace_buf = NULL;
    trace_cap = 0;
}

int cpa_trace_recording(void) { return atomic_load(&cpa_trace_on_) != 0; }

int64_t cpa_trace_count(void)
{
    const int64_t n = atomic_load(&trace_next);
    return n < trace_cap ? n : trace_cap;
}

int64_t cpa_trace_dropped(void) { return atomic_load(&trace_dropped); }

int cpa_trace_set_paused(int paused)
{
    const int was = atomic_load(&cpa_trace_on_) != 0;
    atomic_store(&cpa_trace_on_, trace_started && !paused);
    return was;
}

void cpa_trace_record(int64_t t0, int64_t t1, const char *name, cpa_trace_kind kind, int lane,
                      const cpa_trace_arg *args, int nargs)
{
    if (!trace_buf)
        return;
    const long long i = atomic_fetch_add_explicit(&trace_next, 1, memory_order_relaxed);
    if (i >= trace_cap) {
        atomic_fetch_add_explicit(&trace_dropped, 1, memory_order_relaxed);
        if (!atomic_exchange(&trace_warned, 1))
            fprintf(stderr, "cpattn: the trace buffer is full (%lld events): later events are "
                    "dropped (the trace says how many; raise max_events, cpattn's "
                    "--trace-max-events)\n", (long long)trace_cap);
        return;
    }
    cpa_trace_event *e = &trace_buf[i];
    e->t0 = t0;
    e->t1 = t1 > t0 ? t1 : t0;
    e->name = name ? name : "?";
    e->kind = (int16_t)kind;
    e->lane = (int16_t)(lane >= 0 && lane < CPA_TRACE_LANES ? lane : 0);
    if (nargs > CPA_TRACE_MAX_ARGS)
        nargs = CPA_TRACE_MAX_ARGS;
    e->nargs = (int16_t)(nargs > 0 ? nargs : 0);
    for (int a = 0; a < e->nargs; ++a) {
        e->keys[a] = args[a].key ? args[a].key : "?";
        e->vals[a] = args[a].value;
    }
    atomic_fetch_or_explicit(&trace_lanes, 1ULL << e->lane, memory_order_relaxed);
    atomic_store_explicit(&e->ready, 1, memory_order_release);
}

int64_t cpa_trace_begin(void) { return cpa_trace_t0(); }

void cpa_trace_end(int64_t begin, const char *name, cpa_trace_kind kind, int lane,
                   const cpa_trace_arg *args, int nargs)
{
    if (begin)
        cpa_trace_record(begin, cpa_trace_clock(), name, kind, lane, args, args ? nargs : 0);
}

cpa_trace_view cpa_trace_snapshot(void)
{
    cpa_trace_view v;
    memset(&v, 0, sizeof v);
    if (!trace_buf)
        return v;
    v.events = trace_buf;
    v.capacity = trace_cap;
    v.count = cpa_trace_count();
    v.dropped = atomic_load(&trace_dropped);
    v.lanes = atomic_load(&trace_lanes);
    return v;
}

const char *cpa_trace_lane_name(int lane, char *buf, size_t cap)
{
    if (lane == CPA_TRACE_LANE_MAIN)
        snprintf(buf, cap, "main");
    else if (lane >= CPA_TRACE_LANE_XFER)
        snprintf(buf, cap, "%s slot %d", (lane - CPA_TRACE_LANE_XFER) % 2 ? "send" : "recv",
                 (lane - CPA_TRACE_LANE_XFER) / 2);
    else
        snprintf(buf, cap, "lane %d", lane);
    return buf;
}
