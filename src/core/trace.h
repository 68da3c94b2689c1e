/*
 * trace.h — the trace recorder's inside, shared by cpattn's own sources and
 * never installed (the public half is in cpattn.h, docs/trace.md says what
 * the events mean).
 *
 * What it is: one process-wide buffer of timed events, allocated by
 * cpa_trace_start and filled by a lock-free append (an atomic counter hands
 * out slots, so any thread may record), with timestamps in nanoseconds of
 * CLOCK_MONOTONIC.  An event site costs one predictable branch when not
 * recording:
 *
 *     const int64_t t = cpa_trace_t0();          // 0 when not recording
 *     ... the work ...
 *     CPA_TRACE_END(t, "ring step", CPA_TRACE_COMPUTE, CPA_TRACE_LANE_MAIN,
 *                   {"step", s}, {"owner", k});   // nothing when t == 0
 *
 * What it is not: it knows no MPI.  Gathering the ranks' events into one
 * file is Comm's (src/comm/trace_write.c), which reads the buffer through
 * cpa_trace_snapshot.
 *
 * Lanes ("tid" in the JSON): 0 is a rank's main track (plan calls, ring
 * steps, waits, collectives, a program's layers); 1..31 are free for a
 * program; from CPA_TRACE_LANE_XFER on, each transfer slot of a cpa_xfer
 * has a receive track and a send track, so that transfers in flight at once
 * never overlap on one track.
 */
#ifndef CPATTN_TRACE_H
#define CPATTN_TRACE_H

#include "internal.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

enum {
    CPA_TRACE_LANE_MAIN = 0,
    CPA_TRACE_LANE_XFER = 32, /* receive track of slot h: XFER + 2h, send track: XFER + 2h + 1 */
    CPA_TRACE_LANES = 64      /* lanes 0 .. 63 (a bit each in the used-lanes mask) */
};

/* One recorded event: [t0, t1) in ns on `lane`; `name` and the keys are
 * the recorder's caller's strings (literals), never copied. */
typedef struct cpa_trace_event {
    int64_t t0, t1;
    const char *name;
    const char *keys[CPA_TRACE_MAX_ARGS];
    double vals[CPA_TRACE_MAX_ARGS];
    int16_t kind, lane, nargs;
    atomic_int ready; /* set last (release): the slot is complete */
} cpa_trace_event;

/* Nonzero while recording; read with a relaxed load (a plain move). */
extern atomic_int cpa_trace_on_;

/* Nanoseconds of CLOCK_MONOTONIC (never 0 after boot). */
int64_t cpa_trace_clock(void);

/* The start of an event: the clock when recording, else 0. */
static inline int64_t cpa_trace_t0(void)
{
    return atomic_load_explicit(&cpa_trace_on_, memory_order_relaxed) ? cpa_trace_clock() : 0;
}

/* Append [t0, t1) (t0 != 0).  Up to CPA_TRACE_MAX_ARGS args are kept.  A
 * full buffer drops the event, counts it and says so once on stderr. */
void cpa_trace_record(int64_t t0, int64_t t1, const char *name, cpa_trace_kind kind, int lane,
                      const cpa_trace_arg *args, int nargs);

/* Record [t, now) with the arguments given as {"key", value} pairs (at
 * least one; CPA_TRACE_END0 for none) if t != 0. */
#define CPA_TRACE_END(t, name, kind, lane, ...)                                              \
    do {                                                                                     \
        if (t) {                                                                             \
            const cpa_trace_arg cpa_trace_args_[] = {__VA_ARGS__};                           \
            cpa_trace_record((t), cpa_trace_clock(), (name), (kind), (lane), cpa_trace_args_, \
                             (int)(sizeof cpa_trace_args_ / sizeof cpa_trace_args_[0]));     \
        }                                                                                    \
    } while (0)
#define CPA_TRACE_END0(t, name, kind, lane)                                    \
    do {                                                                       \
        if (t)                                                                 \
            cpa_trace_record((t), cpa_trace_clock(), (name), (kind), (lane), NULL, 0); \
    } while (0)

/* The buffer as the writer sees it: the events handed out so far (slots
 * past the capacity were dropped; a slot whose `ready` is 0 is still being
 * filled by another thread and must be skipped), the capacity, the dropped
 * count and the mask of lanes used.  NULL / zeros when not started. */
typedef struct cpa_trace_view {
    const cpa_trace_event *events;
    int64_t count, capacity, dropped;
    uint64_t lanes;
} cpa_trace_view;

cpa_trace_view cpa_trace_snapshot(void);

/* Pause or resume recording without touching the buffer (the writer's own
 * collectives are not recorded); returns the previous state. */
int cpa_trace_set_paused(int paused);

/* The name of a lane for the JSON metadata ("main", "recv slot 0", ...),
 * into buf; returns buf. */
const char *cpa_trace_lane_name(int lane, char *buf, size_t cap);

#endif /* CPATTN_TRACE_H */
