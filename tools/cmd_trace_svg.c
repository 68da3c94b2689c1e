/*
 * cmd_trace_svg.c — `cpattn trace-svg IN.json OUT.svg`: a trace written by
 * --trace (cpa_trace_write, docs/trace.md) drawn as a self-contained SVG
 * timeline: one lane per rank and track ("pid"/"tid"), nested events
 * stacked in rows inside their lane, bars coloured by category (compute,
 * send, recv, wait, all-to-all, ...), a time axis with ticks in
 * milliseconds, a legend and a title; each bar carries a tooltip (<title>)
 * with its name, duration and arguments.
 *
 * What it is: a minimal JSON reader that is enough for the trace-event
 * files cpattn writes (and other files of the same "traceEvents" format:
 * the object form or the bare array) and strict about syntax — a malformed
 * file is refused with the byte offset and line of the problem (exit 1),
 * bad usage exits 2, and the SVG is written to a temporary file renamed
 * into place, so OUT.svg is never half-written.  What it is not: a
 * general JSON library or a trace analyser; only "X" (complete) and "M"
 * (metadata: process_name, thread_name) events are used, others are
 * skipped.  It needs no MPI and does not start it.
 */
#include "cmd.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_INPUT_BYTES ((long long)1 << 31) /* 2 GiB of JSON at most */
#define MAX_DEPTH 64                          /* nesting of arrays and objects */

/* ---- errors ---------------------------------------------------------------------- */

static char svg_err[1024]; /* the first error, printed once by the command */

static int svg_fail(int rc, const char *fmt, ...)
{
    if (!svg_err[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(svg_err, sizeof svg_err, fmt, ap);
        va_end(ap);
    }
    return rc;
}

/* ---- the JSON reader ------------------------------------------------------------- */

/* A cursor over the whole file; strings decode into `arena` (never longer
 * than the file, so it is sized once). */
typedef struct jreader {
    const char *path;
    const char *s;
    size_t n, i;
    char *arena;
    size_t used;
    int depth;
    int bad; /* an error was recorded */
} jreader;

static int jfail(jreader *r, const char *what)
{
    if (!r->bad) {
        size_t line = 1;
        for (size_t k = 0; k < r->i && k < r->n; ++k)
            line += r->s[k] == '\n';
        svg_fail(EXIT_RUNTIME, "%s: malformed JSON at byte %zu (line %zu): %s", r->path, r->i,
                 line, what);
        r->bad = 1;
    }
    return 0;
}

static void jws(jreader *r)
{
    while (r->i < r->n && (r->s[r->i] == ' ' || r->s[r->i] == '\t' || r->s[r->i] == '\n' ||
                           r->s[r->i] == '\r'))
        ++r->i;
}

static int jpeek(jreader *r)
{
    jws(r);
    return r->i < r->n ? (unsigned char)r->s[r->i] : -1;
}

static int jexpect(jreader *r, char ch, const char *what)
{
    if (jpeek(r) != (unsigned char)ch)
        return jfail(r, what);
    ++r->i;
    return 1;
}

/* After a member of an object or an element of an array: 0 when a ','
 * says another follows, 1 when `close` ends the list (both consumed), -1
 * with the error `what` recorded otherwise. */
static int jnext(jreader *r, char close, const char *what)
{
    const int d = jpeek(r);
    if (d == ',' || d == (unsigned char)close) {
        ++r->i;
        return d == ',' ? 0 : 1;
    }
    jfail(r, what);
    return -1;
}

static int hex4(jreader *r, unsigned *out)
{
    unsigned v = 0;
    for (int k = 0; k < 4; ++k) {
        if (r->i >= r->n)
            return jfail(r, "a \\u escape is cut short");
        const char c = r->s[r->i++];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return jfail(r, "a \\u escape needs four hex digits");
    }
    *out = v;
    return 1;
}

static void put_utf8(jreader *r, unsigned cp)
{
    char *d = r->arena + r->used;
    if (cp < 0x80) {
        d[0] = (char)cp, r->used += 1;
    } else if (cp < 0x800) {
        d[0] = (char)(0xc0 | cp >> 6), d[1] = (char)(0x80 | (cp & 0x3f)), r->used += 2;
    } else if (cp < 0x10000) {
        d[0] = (char)(0xe0 | cp >> 12), d[1] = (char)(0x80 | (cp >> 6 & 0x3f));
        d[2] = (char)(0x80 | (cp & 0x3f)), r->used += 3;
    } else {
        d[0] = (char)(0xf0 | cp >> 18), d[1] = (char)(0x80 | (cp >> 12 & 0x3f));
        d[2] = (char)(0x80 | (cp >> 6 & 0x3f)), d[3] = (char)(0x80 | (cp & 0x3f)), r->used += 4;
    }
}

/* A string at the cursor, decoded into the arena (NUL-terminated); NULL on
 * error.  Decoded text is never longer than its source, escapes included
 * (a \uXXXX of 6 bytes gives at most 3; a surrogate pair of 12 gives 4). */
static const char *jstring(jreader *r)
{
    if (!jexpect(r, '"', "expected a string"))
        return NULL;
    const char *out = r->arena + r->used;
    for (;;) {
        if (r->i >= r->n) {
            jfail(r, "a string is not closed");
            return NULL;
        }
        const unsigned char c = (unsigned char)r->s[r->i++];
        if (c == '"')
            break;
        if (c < 0x20) {
            --r->i;
            jfail(r, "a control character inside a string");
            return NULL;
        }
        if (c != '\\') {
            r->arena[r->used++] = (char)c;
            continue;
        }
        if (r->i >= r->n) {
            jfail(r, "a string ends in a backslash");
            return NULL;
        }
        const char e = r->s[r->i++];
        static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
        const char *k = strchr(from, e);
        if (e && k) {
            r->arena[r->used++] = to[k - from];
        } else if (e == 'u') {
            unsigned cp, lo;
            if (!hex4(r, &cp))
                return NULL;
            if (cp >= 0xd800 && cp < 0xdc00 && r->i + 1 < r->n && r->s[r->i] == '\\' &&
                r->s[r->i + 1] == 'u') {
                r->i += 2;
                if (!hex4(r, &lo))
                    return NULL;
                cp = lo >= 0xdc00 && lo < 0xe000 ? 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00)
                                                 : '?';
            } else if (cp >= 0xd800 && cp < 0xe000) {
                cp = '?'; /* a lone surrogate */
            }
            put_utf8(r, cp ? cp : '?');
        } else {
            --r->i;
            jfail(r, "an unknown escape in a string");
            return NULL;
        }
    }
    r->arena[r->used++] = '\0';
    return out;
}

/* A number (JSON's grammar, checked), or 0 on error. */
static int jnumber(jreader *r, double *out)
{
    jws(r);
    const size_t start = r->i;
    if (r->i < r->n && r->s[r->i] == '-')
        ++r->i;
    size_t digits = 0;
    if (r->i < r->n && r->s[r->i] == '0')
        ++r->i, ++digits;
    else
        while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9')
            ++r->i, ++digits;
    if (!digits)
        return jfail(r, "expected a number");
    if (r->i < r->n && r->s[r->i] == '.') {
        ++r->i;
        size_t f = 0;
        while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9')
            ++r->i, ++f;
        if (!f)
            return jfail(r, "a number needs digits after '.'");
    }
    if (r->i < r->n && (r->s[r->i] == 'e' || r->s[r->i] == 'E')) {
        ++r->i;
        if (r->i < r->n && (r->s[r->i] == '+' || r->s[r->i] == '-'))
            ++r->i;
        size_t x = 0;
        while (r->i < r->n && r->s[r->i] >= '0' && r->s[r->i] <= '9')
            ++r->i, ++x;
        if (!x)
            return jfail(r, "a number needs digits in its exponent");
    }
    char tmp[64];
    const size_t len = r->i - start;
    if (len >= sizeof tmp)
        return jfail(r, "a number is too long");
    memcpy(tmp, r->s + start, len);
    tmp[len] = '\0';
    *out = strtod(tmp, NULL);
    if (!isfinite(*out))
        return jfail(r, "a number out of range");
    return 1;
}

static int jliteral(jreader *r, const char *word)
{
    const size_t len = strlen(word);
    if (r->n - r->i < len || memcmp(r->s + r->i, word, len) != 0)
        return jfail(r, "expected a value (string, number, object, array, true, false, null)");
    r->i += len;
    return 1;
}

/* Any value, checked and passed over (strings decoded and dropped). */
static int jskip(jreader *r)
{
    const int c = jpeek(r);
    if (c == '"') {
        const size_t mark = r->used;
        const int ok = jstring(r) != NULL;
        r->used = mark;
        return ok;
    }
    if (c == '{' || c == '[') {
        if (++r->depth > MAX_DEPTH)
            return jfail(r, "nested deeper than 64 levels");
        ++r->i;
        const char close = c == '{' ? '}' : ']';
        if (jpeek(r) == close) {
            ++r->i, --r->depth;
            return 1;
        }
        for (;;) {
            if (c == '{') {
                const size_t mark = r->used;
                if (!jstring(r) || !jexpect(r, ':', "expected ':' after a key"))
                    return 0;
                r->used = mark;
            }
            if (!jskip(r))
                return 0;
            const int e = jnext(r, close, c == '{' ? "expected ',' or '}' in an object"
                                                   : "expected ',' or ']' in an array");
            if (e) {
                r->depth -= e > 0;
                return e > 0;
            }
        }
    }
    if (c == 't')
        return jliteral(r, "true");
    if (c == 'f')
        return jliteral(r, "false");
    if (c == 'n')
        return jliteral(r, "null");
    double v;
    return jnumber(r, &v);
}

/* ---- the events ------------------------------------------------------------------- */

typedef struct svg_event {
    const char *name, *cat;
    double ts, dur; /* microseconds */
    long long pid, tid;
    const char *args; /* the raw "args" text in the file, args_len bytes (tooltip) */
    size_t args_len;
    int lane, depth;
} svg_event;

typedef struct name_entry {
    long long pid, tid; /* tid -1: a process name */
    const char *name;
} name_entry;

typedef struct trace_data {
    svg_event *ev;
    size_t nev, cap;
    name_entry *names;
    size_t nnames, names_cap;
    double dropped; /* otherData.dropped_events (-1: absent) */
    size_t skipped; /* events of other phases */
} trace_data;

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 1;
    size_t c = *cap ? *cap * 2 : 1024;
    while (c < need)
        c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q)
        return 0;
    *p = q, *cap = c;
    return 1;
}

/* One element of traceEvents. */
static int read_event(jreader *r, trace_data *t, size_t index)
{
    if (!jexpect(r, '{', "an element of traceEvents must be an object"))
        return 0;
    if (++r->depth > MAX_DEPTH)
        return jfail(r, "nested deeper than 64 levels");
    svg_event e = {.name = "", .cat = "", .ts = NAN, .dur = NAN, .pid = 0, .tid = 0};
    const char *ph = "", *meta_name = NULL;
    int has_pid = 0;
    if (jpeek(r) == '}') {
        ++r->i;
        --r->depth;
        ++t->skipped;
        return 1;
    }
    for (;;) {
        const char *key = jstring(r);
        if (!key || !jexpect(r, ':', "expected ':' after a key"))
            return 0;
        double v;
        if (!strcmp(key, "name") || !strcmp(key, "cat") || !strcmp(key, "ph")) {
            if (jpeek(r) != '"')
                return jfail(r, "\"name\", \"cat\" and \"ph\" must be strings");
            const char *val = jstring(r);
            if (!val)
                return 0;
            *(key[0] == 'n' ? &e.name : key[0] == 'c' ? &e.cat : &ph) = val;
        } else if (!strcmp(key, "ts") || !strcmp(key, "dur") || !strcmp(key, "pid") ||
                   !strcmp(key, "tid")) {
            if (!jnumber(r, &v))
                return 0;
            if ((!strcmp(key, "pid") || !strcmp(key, "tid")) && !(fabs(v) < 9e15))
                return jfail(r, "\"pid\" and \"tid\" must be integers of at most 15 digits");
            if (!strcmp(key, "ts"))
                e.ts = v;
            else if (!strcmp(key, "dur"))
                e.dur = v;
            else if (!strcmp(key, "pid"))
                e.pid = (long long)v, has_pid = 1;
            else
                e.tid = (long long)v;
        } else if (!strcmp(key, "args") && jpeek(r) == '{') {
            /* Keep the raw text for the tooltip; a metadata event's name
             * is its args.name. */
            const size_t save = r->i;
            e.args = r->s + save;
            if (!jskip(r))
                return 0;
            e.args_len = r->i - save;
            const size_t end = r->i;
            r->i = save + 1;
            while (jpeek(r) == '"') {
                const char *k = jstring(r);
                if (!k || !jexpect(r, ':', "expected ':' after a key"))
                    return 0;
                if (!strcmp(k, "name") && jpeek(r) == '"')
                    meta_name = jstring(r);
                else if (!jskip(r))
                    return 0;
                if (jpeek(r) == ',')
                    ++r->i;
            }
            r->i = end;
        } else if (!jskip(r)) {
            return 0;
        }
        const int end = jnext(r, '}', "expected ',' or '}' in an event");
        if (end < 0)
            return 0;
        if (end > 0) {
            --r->depth;
            break;
        }
    }
    if (!strcmp(ph, "M")) {
        const int proc = !strcmp(e.name, "process_name"), thr = !strcmp(e.name, "thread_name");
        if ((proc || thr) && meta_name) {
            if (!grow((void **)&t->names, &t->names_cap, t->nnames + 1, sizeof *t->names))
                return svg_fail(EXIT_RUNTIME, "out of memory reading %s", r->path), 0;
            t->names[t->nnames++] = (name_entry){e.pid, proc ? -1 : e.tid, meta_name};
        }
        return 1;
    }
    if (strcmp(ph, "X") != 0) {
        ++t->skipped;
        return 1;
    }
    if (!isfinite(e.ts) || !isfinite(e.dur) || e.dur < 0 || !has_pid) {
        svg_fail(EXIT_RUNTIME, "%s: traceEvents[%zu] (\"%.60s\"): a complete event (\"ph\":\"X\") "
                 "needs numeric \"ts\", \"pid\" and \"dur\" >= 0", r->path, index, e.name);
        r->bad = 1;
        return 0;
    }
    if (!grow((void **)&t->ev, &t->cap, t->nev + 1, sizeof *t->ev))
        return svg_fail(EXIT_RUNTIME, "out of memory reading %s", r->path), 0;
    t->ev[t->nev++] = e;
    return 1;
}

static int read_events_array(jreader *r, trace_data *t)
{
    if (!jexpect(r, '[', "traceEvents must be an array"))
        return 0;
    if (jpeek(r) == ']') {
        ++r->i;
        return 1;
    }
    for (size_t k = 0;; ++k) {
        if (!read_event(r, t, k))
            return 0;
        const int e = jnext(r, ']', "expected ',' or ']' in traceEvents");
        if (e)
            return e > 0;
    }
}

/* otherData: only dropped_events is used. */
static int read_other(jreader *r, trace_data *t)
{
    if (jpeek(r) != '{')
        return jskip(r);
    ++r->i;
    if (jpeek(r) == '}') {
        ++r->i;
        return 1;
    }
    for (;;) {
        const char *k = jstring(r);
        if (!k || !jexpect(r, ':', "expected ':' after a key"))
            return 0;
        if (!strcmp(k, "dropped_events") && jpeek(r) != '"' && jpeek(r) != '{' &&
            jpeek(r) != '[' && jpeek(r) != 'n' && jpeek(r) != 't' && jpeek(r) != 'f') {
            if (!jnumber(r, &t->dropped))
                return 0;
        } else if (!jskip(r)) {
            return 0;
        }
        const int e = jnext(r, '}', "expected ',' or '}' in otherData");
        if (e)
            return e > 0;
    }
}

/* The whole file: {"traceEvents": [...], ...} or a bare [...]. */
static int read_trace(jreader *r, trace_data *t)
{
    int found = 0;
    if (jpeek(r) == '[') {
        found = read_events_array(r, t);
        if (!found)
            return 0;
    } else {
        if (!jexpect(r, '{', "a trace is an object with \"traceEvents\" (or an array of events)"))
            return 0;
        if (jpeek(r) != '}')
            for (;;) {
                const char *k = jstring(r);
                if (!k || !jexpect(r, ':', "expected ':' after a key"))
                    return 0;
                if (!strcmp(k, "traceEvents")) {
                    if (!read_events_array(r, t))
                        return 0;
                    found = 1;
                } else if (!strcmp(k, "otherData")) {
                    if (!read_other(r, t))
                        return 0;
                } else if (!jskip(r)) {
                    return 0;
                }
                const int e = jnext(r, '}', "expected ',' or '}' at the top level");
                if (e < 0)
                    return 0;
                if (e > 0)
                    break;
            }
        else
            ++r->i; /* the empty object's '}' */
    }
    if (jpeek(r) != -1)
        return jfail(r, "text after the end of the trace");
    if (!found) {
        svg_fail(EXIT_RUNTIME, "%s: no \"traceEvents\" array: not a trace-event file", r->path);
        return 0;
    }
    return 1;
}

/* ---- layout ----------------------------------------------------------------------- */

typedef struct lane {
    long long pid, tid;
    int rows;  /* nesting depth + 1 */
    double y;  /* top, px */
} lane;

static int cmp_lane_key(long long ap, long long at, long long bp, long long bt)
{
    return ap != bp ? (ap < bp ? -1 : 1) : at != bt ? (at < bt ? -1 : 1) : 0;
}

static int by_lane_then_time(const void *a, const void *b)
{
    const svg_event *x = a, *y = b;
    int c = cmp_lane_key(x->pid, x->tid, y->pid, y->tid);
    if (c)
        return c;
    if (x->ts != y->ts)
        return x->ts < y->ts ? -1 : 1;
    return x->dur > y->dur ? -1 : x->dur < y->dur; /* the enclosing one first */
}

static const char *name_of(const trace_data *t, long long pid, long long tid)
{
    for (size_t k = 0; k < t->nnames; ++k)
        if (t->names[k].pid == pid && t->names[k].tid == tid)
            return t->names[k].name;
    return NULL;
}

/* Nesting depth of each event inside its lane (events sorted by lane and
 * time); returns the number of lanes written into `lanes`. */
static size_t assign_lanes(trace_data *t, lane *lanes)
{
    size_t nl = 0;
    double stack[MAX_DEPTH];
    int top = 0;
    for (size_t k = 0; k < t->nev; ++k) {
        svg_event *e = &t->ev[k];
        if (!nl || cmp_lane_key(lanes[nl - 1].pid, lanes[nl - 1].tid, e->pid, e->tid)) {
            lanes[nl] = (lane){e->pid, e->tid, 1, 0};
            ++nl;
            top = 0;
        }
        const double eps = 1e-6 * (fabs(e->ts) + 1.0);
        while (top > 0 && stack[top - 1] <= e->ts + eps)
            --top;
        e->depth = top < MAX_DEPTH ? top : MAX_DEPTH - 1;
        if (top < MAX_DEPTH)
            stack[top++] = e->ts + e->dur;
        e->lane = (int)(nl - 1);
        if (e->depth + 1 > lanes[nl - 1].rows)
            lanes[nl - 1].rows = e->depth + 1;
    }
    return nl;
}

/* ---- SVG text --------------------------------------------------------------------- */

typedef struct sbuf {
    char *p;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        const size_t room = b->cap - b->n;
        const int k = vsnprintf(b->p ? b->p + b->n : NULL, room, fmt, ap);
        va_end(ap);
        if (k < 0) {
            b->oom = 1;
            return;
        }
        if ((size_t)k < room) {
            b->n += (size_t)k;
            return;
        }
        if (!grow((void **)&b->p, &b->cap, b->n + (size_t)k + 1, 1)) {
            b->oom = 1;
            return;
        }
    }
}

/* `s` (at most `len` bytes, or to its NUL) as XML character data: markup
 * characters escaped, control characters and invalid UTF-8 as '?'. */
static void sb_xml(sbuf *b, const char *s, size_t len)
{
    for (size_t k = 0; k < len && s[k]; ++k) {
        const unsigned char c = (unsigned char)s[k];
        if (c == '&')
            sb_printf(b, "&amp;");
        else if (c == '<')
            sb_printf(b, "&lt;");
        else if (c == '>')
            sb_printf(b, "&gt;");
        else if (c == '"')
            sb_printf(b, "&quot;");
        else if (c < 0x20 || c == 0x7f)
            sb_printf(b, "?");
        else if (c < 0x80)
            sb_printf(b, "%c", c);
        else {
            /* a well-formed UTF-8 sequence is copied whole, anything else is '?' */
            const int need = c >= 0xf0 && c < 0xf5 ? 3 : c >= 0xe0 ? 2 : c >= 0xc2 && c < 0xe0 ? 1 : -1;
            int ok = need > 0 && k + (size_t)need < len;
            for (int j = 1; ok && j <= need; ++j)
                ok = ((unsigned char)s[k + (size_t)j] & 0xc0) == 0x80;
            if (!ok) {
                sb_printf(b, "?");
                continue;
            }
            sb_printf(b, "%.*s", need + 1, s + k);
            k += (size_t)need;
        }
    }
}

typedef struct category {
    const char *cat, *label, *fill;
} category;

/* Colours by "cat"; the first five are the ones the legend always shows. */
static const category categories[] = {
    {"compute", "compute (ring step, kernel)", "#43a047"},
    {"send", "send (post to completion)", "#1e88e5"},
    {"recv", "recv (post to completion)", "#4dd0e1"},
    {"wait", "wait (exposed communication)", "#e53935"},
    {"alltoall", "all-to-all", "#fb8c00"},
    {"allgather", "all-gather / reduce-scatter", "#8e24aa"},
    {"collective", "all-reduce / broadcast", "#6d4c41"},
    {"plan", "plan forward / backward", "#b0bec5"},
    {"model", "model span (layer, iteration)", "#e0e0e0"},
};
#define NCAT ((int)(sizeof categories / sizeof categories[0]))

static int category_of(const char *cat)
{
    for (int k = 0; k < NCAT; ++k)
        if (!strcmp(cat, categories[k].cat))
            return k;
    return -1;
}

/* A tick step of 1, 2 or 5 x 10^k microseconds giving about `want` ticks. */
static double tick_step(double span_us, int want)
{
    const double raw = span_us / want, p = pow(10.0, floor(log10(raw)));
    const double m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

typedef struct svg_opts {
    const char *in, *out, *title;
    double width;
    double t0, t1; /* --range in microseconds; t1 <= t0: the whole trace */
} svg_opts;

enum { LABEL_W = 270, RIGHT_PAD = 20, ROW_H = 16, LANE_GAP = 6, TOP = 78 };

static void draw(sbuf *b, const svg_opts *o, trace_data *t, lane *lanes, size_t nl)
{
    /* Time range. */
    double lo = INFINITY, hi = -INFINITY;
    for (size_t k = 0; k < t->nev; ++k) {
        lo = fmin(lo, t->ev[k].ts);
        hi = fmax(hi, t->ev[k].ts + t->ev[k].dur);
    }
    if (!t->nev)
        lo = 0, hi = 1;
    if (o->t1 > o->t0)
        lo = o->t0, hi = o->t1;
    if (hi <= lo)
        hi = lo + 1;
    const double plot_w = o->width - LABEL_W - RIGHT_PAD, xs = plot_w / (hi - lo);
    /* Lanes' places. */
    double y = TOP;
    long long prev_pid = 0;
    for (size_t l = 0; l < nl; ++l) {
        if (l && lanes[l].pid != prev_pid)
            y += 2 * LANE_GAP; /* a wider gap between ranks */
        prev_pid = lanes[l].pid;
        lanes[l].y = y;
        y += lanes[l].rows * ROW_H + LANE_GAP;
    }
    const double plot_bottom = y, legend_y = y + 24;
    const double height = legend_y + 22 * ((NCAT + 2) / 3) + 16;
    sb_printf(b, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                 "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
                 "viewBox=\"0 0 %.0f %.0f\" font-family=\"Helvetica, Arial, sans-serif\" "
                 "font-size=\"11\">\n", o->width, height, o->width, height);
    sb_printf(b, "<rect x=\"0\" y=\"0\" width=\"%.0f\" height=\"%.0f\" fill=\"#ffffff\"/>\n",
              o->width, height);
    /* Title and subtitle. */
    sb_printf(b, "<text x=\"12\" y=\"22\" font-size=\"16\" font-weight=\"bold\">");
    sb_xml(b, o->title, strlen(o->title));
    sb_printf(b, "</text>\n<text x=\"12\" y=\"40\" fill=\"#555555\">%zu events on %zu tracks, "
                 "%.3f ms shown", t->nev, nl, (hi - lo) / 1000.0);
    if (t->dropped > 0)
        sb_printf(b, "; %.0f events were dropped when recording (buffer full)", t->dropped);
    sb_printf(b, "</text>\n");
    /* Time axis: ticks and grid lines in ms from the start of the range. */
    const double step = tick_step(hi - lo, 10);
    sb_printf(b, "<g stroke=\"#dddddd\" stroke-width=\"1\">\n");
    for (double tk = 0; tk <= hi - lo + 1e-9 * step; tk += step) {
        const double x = LABEL_W + tk * xs;
        sb_printf(b, "<line x1=\"%.2f\" y1=\"%d\" x2=\"%.2f\" y2=\"%.1f\"/>\n", x, TOP - 8, x,
                  plot_bottom);
    }
    sb_printf(b, "</g>\n<g fill=\"#333333\" text-anchor=\"middle\">\n");
    for (double tk = 0; tk <= hi - lo + 1e-9 * step; tk += step)
        sb_printf(b, "<text x=\"%.2f\" y=\"%d\">%g</text>\n", LABEL_W + tk * xs, TOP - 12,
                  tk / 1000.0);
    sb_printf(b, "</g>\n<text x=\"%d\" y=\"%d\" fill=\"#333333\" text-anchor=\"end\">time "
                 "(ms)</text>\n", LABEL_W - 8, TOP - 12);
    /* Lane labels and backgrounds. */
    for (size_t l = 0; l < nl; ++l) {
        const char *pn = name_of(t, lanes[l].pid, -1), *tn = name_of(t, lanes[l].pid, lanes[l].tid);
        char pbuf[32], tbuf[32];
        snprintf(pbuf, sizeof pbuf, "pid %lld", lanes[l].pid);
        snprintf(tbuf, sizeof tbuf, "tid %lld", lanes[l].tid);
        sb_printf(b, "<rect x=\"%d\" y=\"%.1f\" width=\"%.2f\" height=\"%d\" fill=\"%s\"/>\n",
                  LABEL_W, lanes[l].y, plot_w, lanes[l].rows * ROW_H,
                  lanes[l].pid % 2 ? "#f7f7fb" : "#fbfbf7");
        sb_printf(b, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\"><tspan font-weight=\"bold\">",
                  LABEL_W - 8, lanes[l].y + 12);
        sb_xml(b, pn ? pn : pbuf, 48);
        sb_printf(b, "</tspan> ");
        sb_xml(b, tn ? tn : tbuf, 40);
        sb_printf(b, "</text>\n");
    }
    /* The bars, in file order of lanes and time (containers first). */
    for (size_t k = 0; k < t->nev; ++k) {
        const svg_event *e = &t->ev[k];
        double a = e->ts, z = e->ts + e->dur;
        if (z < lo || a > hi)
            continue;
        a = fmax(a, lo), z = fmin(z, hi);
        const double x = LABEL_W + (a - lo) * xs, w = fmax((z - a) * xs, 0.4);
        const double by = lanes[e->lane].y + e->depth * ROW_H + 1;
        const int c = category_of(e->cat);
        sb_printf(b, "<rect x=\"%.2f\" y=\"%.1f\" width=\"%.2f\" height=\"%d\" fill=\"%s\"%s>"
                     "<title>", x, by, w, ROW_H - 2, c >= 0 ? categories[c].fill : "#9e9e9e",
                  w > 3 ? " stroke=\"#ffffff\" stroke-width=\"0.5\"" : "");
        sb_xml(b, e->name, 200);
        sb_printf(b, " [");
        sb_xml(b, e->cat, 40);
        sb_printf(b, "] %.3f ms at %.3f ms", e->dur / 1000.0, (e->ts - lo) / 1000.0);
        if (e->args && e->args_len > 2) { /* not "{}" */
            sb_printf(b, " ");
            sb_xml(b, e->args, e->args_len < 400 ? e->args_len : 400);
        }
        sb_printf(b, "</title></rect>\n");
        const size_t chars = (size_t)(w / 6.2);
        if (chars >= 4) {
            sb_printf(b, "<text x=\"%.2f\" y=\"%.1f\" font-size=\"10\" fill=\"#111111\" "
                         "pointer-events=\"none\">", x + 2, by + ROW_H - 5);
            size_t len = strlen(e->name);
            sb_xml(b, e->name, len < chars ? len : chars);
            sb_printf(b, "</text>\n");
        }
    }
    /* Legend. */
    for (int k = 0; k < NCAT; ++k) {
        const double lx = 12 + (k % 3) * 300, ly = legend_y + (k / 3) * 22;
        sb_printf(b, "<rect x=\"%.0f\" y=\"%.0f\" width=\"14\" height=\"12\" fill=\"%s\"/>"
                     "<text x=\"%.0f\" y=\"%.0f\">", lx, ly, categories[k].fill, lx + 20, ly + 10);
        sb_xml(b, categories[k].label, 80);
        sb_printf(b, "</text>\n");
    }
    sb_printf(b, "</svg>\n");
}

/* ---- files ------------------------------------------------------------------------ */

static int read_file(const char *path, char **data, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return svg_fail(EXIT_RUNTIME, "%s: cannot open: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (!grow((void **)&buf, &cap, len + 65536 + 1, 1)) {
            fclose(f);
            free(buf);
            return svg_fail(EXIT_RUNTIME, "%s: out of memory reading it", path);
        }
        const size_t got = fread(buf + len, 1, 65536, f);
        len += got;
        if ((long long)len > MAX_INPUT_BYTES) {
            fclose(f);
            free(buf);
            return svg_fail(EXIT_RUNTIME, "%s: larger than 2 GiB", path);
        }
        if (got < 65536)
            break;
    }
    const int err = ferror(f);
    fclose(f);
    if (err) {
        free(buf);
        return svg_fail(EXIT_RUNTIME, "%s: read error", path);
    }
    buf[len] = '\0';
    *data = buf, *n = len;
    return 0;
}

/* The SVG to a temporary next to `path`, renamed into place. */
static int write_atomic(const char *path, const char *data, size_t n)
{
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return svg_fail(EXIT_RUNTIME, "%s: the path is too long", path);
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return svg_fail(EXIT_RUNTIME, "%s: cannot create the temporary file %s: %s", path, tmp,
                        strerror(errno));
    int ok = fwrite(data, 1, n, f) == n;
    int err = errno;
    if (fclose(f) != 0 && ok)
        ok = 0, err = errno;
    if (ok && rename(tmp, path) != 0)
        ok = 0, err = errno;
    if (!ok) {
        remove(tmp);
        return svg_fail(EXIT_RUNTIME, "%s: cannot write it: %s", path, strerror(err));
    }
    return 0;
}

/* ---- the command ------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: cpattn trace-svg IN.json OUT.svg [--title TEXT] [--width PX] "
               "[--range START_MS:END_MS]\n\n"
               "Draw a trace written by `cpattn attn --trace` or `cpattn train --trace` (Chrome /\n"
               "Perfetto trace-event JSON) as an SVG timeline: one lane per rank and track,\n"
               "nested events stacked in rows, bars coloured by category (compute, send, recv,\n"
               "wait, all-to-all, ...), a time axis in ms, a legend; hover a bar for its name,\n"
               "duration and arguments.  OUT.svg is written only once the whole drawing is\n"
               "ready (temporary file + rename).\n\n"
               "  --title TEXT            the title (default: \"cpattn trace: IN.json\")\n"
               "  --width PX              width of the picture, 600..20000 (default 1400)\n"
               "  --range START_MS:END_MS only this window of time, in ms from the trace's start\n\n"
               "Exit codes: 0 ok, 1 the input is not a readable trace (the message names the\n"
               "byte and line of a JSON error) or the output cannot be written, 2 bad usage.\n");
}

static int parse_args(int argc, char **argv, svg_opts *o, char *title_buf, size_t cap)
{
    memset(o, 0, sizeof *o);
    o->width = 1400;
    int npos = 0;
    for (int k = 1; k < argc; ++k) {
        const char *a = argv[k];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return -1;
        }
        if (!strcmp(a, "--title") || !strcmp(a, "--width") || !strcmp(a, "--range")) {
            if (k + 1 >= argc)
                return svg_fail(EXIT_USAGE, "%s: needs a value (see cpattn trace-svg --help)", a);
            const char *v = argv[++k];
            char *end;
            if (!strcmp(a, "--title")) {
                o->title = v;
            } else if (!strcmp(a, "--width")) {
                errno = 0;
                o->width = strtod(v, &end);
                if (*end || errno || !(o->width >= 600 && o->width <= 20000))
                    return svg_fail(EXIT_USAGE, "--width %s: expected a number of pixels in "
                                    "600..20000", v);
            } else {
                errno = 0;
                const double s0 = strtod(v, &end);
                double s1 = NAN;
                if (*end == ':')
                    s1 = strtod(end + 1, &end);
                if (*end || errno || !isfinite(s0) || !isfinite(s1) || s0 < 0 || s1 <= s0)
                    return svg_fail(EXIT_USAGE, "--range %s: expected START_MS:END_MS with "
                                    "0 <= START < END", v);
                o->t0 = s0 * 1000.0, o->t1 = s1 * 1000.0;
            }
            continue;
        }
        if (a[0] == '-' && a[1]) {
            return svg_fail(EXIT_USAGE, "unknown flag '%s' (see cpattn trace-svg --help)", a);
        }
        if (npos == 0)
            o->in = a;
        else if (npos == 1)
            o->out = a;
        else
            return svg_fail(EXIT_USAGE, "'%s': expected two files, IN.json and OUT.svg", a);
        ++npos;
    }
    if (npos != 2)
        return svg_fail(EXIT_USAGE, "expected two files, IN.json and OUT.svg (see cpattn "
                        "trace-svg --help)");
    if (!o->title) {
        snprintf(title_buf, cap, "cpattn trace: %s", o->in);
        o->title = title_buf;
    }
    return 0;
}

static int run_svg(const svg_opts *o)
{
    char *data = NULL;
    size_t n = 0;
    int rc = read_file(o->in, &data, &n);
    if (rc)
        return rc;
    trace_data t;
    memset(&t, 0, sizeof t);
    t.dropped = -1;
    jreader r = {.path = o->in, .s = data, .n = n, .arena = malloc(n + 1)};
    sbuf b = {0};
    lane *lanes = NULL;
    if (!r.arena) {
        rc = svg_fail(EXIT_RUNTIME, "%s: out of memory reading it", o->in);
    } else if (!read_trace(&r, &t)) {
        rc = EXIT_RUNTIME;
    } else {
        /* (the tooltips' args text points into `data`, freed last) */
        qsort(t.ev, t.nev, sizeof *t.ev, by_lane_then_time);
        lanes = malloc(sizeof *lanes * (t.nev ? t.nev : 1));
        if (!lanes) {
            rc = svg_fail(EXIT_RUNTIME, "out of memory laying out %zu events", t.nev);
        } else {
            const size_t nl = assign_lanes(&t, lanes);
            draw(&b, o, &t, lanes, nl);
            if (b.oom)
                rc = svg_fail(EXIT_RUNTIME, "out of memory drawing %zu events", t.nev);
            else
                rc = write_atomic(o->out, b.p, b.n);
            if (!rc)
                printf("wrote %s: %zu events on %zu tracks\n", o->out, t.nev, nl);
        }
    }
    free(lanes);
    free(b.p);
    free(t.ev);
    free(t.names);
    free(r.arena);
    free(data);
    return rc;
}

int cmd_trace_svg(int argc, char **argv)
{
    svg_opts o;
    char title[4200];
    svg_err[0] = '\0';
    int rc = parse_args(argc, argv, &o, title, sizeof title);
    if (rc < 0)
        return EXIT_OK; /* --help */
    if (!rc)
        rc = run_svg(&o);
    if (rc)
        fprintf(stderr, "cpattn trace-svg: %s\n", svg_err[0] ? svg_err : "failed");
    return rc;
}
