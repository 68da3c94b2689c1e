/*
 * args.c — the config-table parser behind every `cpattn` subcommand: it turns
 * defaults, environment variables and the command line (in that order of
 * precedence, last wins) into the fields of a subcommand's config struct,
 * checking each value strictly against its row of the table, and prints
 * --help and the effective configuration from the same table.  It does not
 * know any particular flag; cross-flag rules live in the subcommands.
 *
 * The second half holds small helpers every subcommand shares: timing,
 * medians, peak RSS, aligned buffers and the counter-based random generator
 * for attention inputs.
 */
#define _DEFAULT_SOURCE /* sysconf(_SC_PHYS_PAGES) */
#include "args.h"

#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* ------------------------------------------------------------------------ */
/* Table lookups                                                             */
/* ------------------------------------------------------------------------ */

/* Index of the option named by the first `len` chars of `name`, or -1. */
static int find_option(const cli_spec *spec, const char *name, size_t len)
{
    for (int i = 0; i < spec->count; ++i) {
        const char *flag = spec->options[i].flag;
        if (strlen(flag) == len && strncmp(flag, name, len) == 0)
            return i;
    }
    return -1;
}

int cli_index(const cli_spec *spec, const char *flag)
{
    int i = find_option(spec, flag, strlen(flag));
    assert(i >= 0 && "flag missing from the subcommand's table");
    return i;
}

int cli_given(const cli_args *args, const char *flag)
{
    cli_source s = args->source[cli_index(args->spec, flag)];
    return s == CLI_SRC_ARG || s == CLI_SRC_ENV;
}

void cli_mark_derived(cli_args *args, const char *flag, const char *note)
{
    int i = cli_index(args->spec, flag);
    args->source[i] = CLI_SRC_DERIVED;
    args->note[i] = note;
}

/* Set by cli_set_quiet(): parse as usual, print nothing. */
static int quiet_output;

void cli_set_quiet(int quiet)
{
    quiet_output = quiet != 0;
}

int cli_usage(const cli_spec *spec, const char *fmt, ...)
{
    va_list ap;
    if (quiet_output)
        return CLI_USAGE;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", spec->command);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return CLI_USAGE;
}

/* The `index`-th '|'-separated word of `choices` into buf ("" if none). */
static const char *choice_word(const char *choices, int index, char *buf, size_t size)
{
    const char *p = choices ? choices : "";
    for (int k = 0; k < index && p; ++k) {
        p = strchr(p, '|');
        if (p)
            ++p;
    }
    buf[0] = '\0';
    if (!p)
        return buf;
    size_t n = strcspn(p, "|");
    if (n >= size)
        n = size - 1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    return buf;
}

const char *cli_choice_name(const cli_spec *spec, const char *flag, int index, char *buf,
                            size_t size)
{
    return choice_word(spec->options[cli_index(spec, flag)].choices, index, buf, size);
}

/* Index of `text` among `choices`, or -1. */
static int choice_index(const char *choices, const char *text)
{
    size_t len = strlen(text);
    const char *p = choices;
    for (int k = 0; p; ++k) {
        size_t n = strcspn(p, "|");
        if (n == len && strncmp(p, text, n) == 0)
            return k;
        p = strchr(p, '|');
        if (p)
            ++p;
    }
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Values                                                                    */
/* ------------------------------------------------------------------------ */

static void *field(const cli_args *args, int i)
{
    return (char *)args->cfg + args->spec->options[i].offset;
}

/* Strict decimal integer: the whole text, no blanks, no overflow. */
static int parse_int(const char *text, int64_t *out, int *overflow)
{
    *overflow = 0;
    if (!*text || isspace((unsigned char)*text))
        return 0;
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (*end != '\0')
        return 0;
    if (errno == ERANGE) {
        *overflow = 1;
        return 0;
    }
    *out = (int64_t)v;
    return 1;
}

static void int_bounds(const cli_option *o, int64_t *lo, int64_t *hi)
{
    int unset = o->min == 0 && o->max == 0;
    *lo = unset ? INT64_MIN : o->min;
    *hi = unset ? INT64_MAX : o->max;
}

/* The rule an integer broke, for messages: "must be >= 1", ... */
static void int_rule(const cli_option *o, char *buf, size_t size)
{
    int64_t lo, hi;
    int_bounds(o, &lo, &hi);
    if (hi == INT64_MAX)
        snprintf(buf, size, "must be >= %lld", (long long)lo);
    else if (lo == INT64_MIN)
        snprintf(buf, size, "must be <= %lld", (long long)hi);
    else
        snprintf(buf, size, "must be between %lld and %lld", (long long)lo, (long long)hi);
}

/* One integer of an int or int-list option; prints the error itself. */
static int set_int(const cli_args *args, int i, const char *what, const char *item, int64_t *out)
{
    const cli_option *o = &args->spec->options[i];
    char rule[96];
    int overflow;
    int_rule(o, rule, sizeof rule);
    if (!parse_int(item, out, &overflow)) {
        if (overflow)
            return cli_usage(args->spec, "%s: does not fit in 64 bits (%s)", what, rule);
        return cli_usage(args->spec, "%s: not an integer%s", what,
                         o->type == CLI_INT_LIST ? " list (expected N,N,...)" : "");
    }
    int64_t lo, hi;
    int_bounds(o, &lo, &hi);
    if (*out < lo || *out > hi)
        return cli_usage(args->spec, "%s: %s", what, rule);
    return CLI_OK;
}

static int set_int_list(const cli_args *args, int i, const char *what, const char *text)
{
    cli_int_list *list = field(args, i);
    char item[64];
    const char *p = text;
    list->n = 0;
    for (;;) {
        size_t n = strcspn(p, ",");
        if (n == 0 || n >= sizeof item)
            return cli_usage(args->spec, "%s: not an integer list (expected N,N,...)", what);
        if (list->n == CLI_LIST_MAX)
            return cli_usage(args->spec, "%s: at most %d values", what, CLI_LIST_MAX);
        memcpy(item, p, n);
        item[n] = '\0';
        if (set_int(args, i, what, item, &list->v[list->n]) != CLI_OK)
            return CLI_USAGE;
        list->n++;
        if (p[n] == '\0')
            return CLI_OK;
        p += n + 1;
    }
}

static int set_float(const cli_args *args, int i, const char *what, const char *text)
{
    const cli_option *o = &args->spec->options[i];
    char *end = NULL;
    double v = *text && !isspace((unsigned char)*text) ? strtod(text, &end) : NAN;
    if (isnan(v) || *end != '\0' || !isfinite(v))
        return cli_usage(args->spec, "%s: not a finite number", what);
    int ranged = !(o->fmin == 0 && o->fmax == 0);
    if (ranged && (v < o->fmin || v > o->fmax)) {
        if (isinf(o->fmax))
            return cli_usage(args->spec, "%s: must be >= %g", what, o->fmin);
        return cli_usage(args->spec, "%s: must be between %g and %g", what, o->fmin, o->fmax);
    }
    *(double *)field(args, i) = v;
    return CLI_OK;
}

static int set_flag(const cli_args *args, int i, const char *what, const char *text)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};
    for (int k = 0; k < 4; ++k) {
        if (strcmp(text, yes[k]) == 0 || strcmp(text, no[k]) == 0) {
            *(int *)field(args, i) = strcmp(text, yes[k]) == 0;
            return CLI_OK;
        }
    }
    return cli_usage(args->spec, "%s: a flag takes no value (or true/false, 1/0, on/off)", what);
}

static int set_choice(const cli_args *args, int i, const char *what, const char *text)
{
    const cli_option *o = &args->spec->options[i];
    int k = choice_index(o->choices, text);
    if (k < 0) {
        char allowed[256];
        snprintf(allowed, sizeof allowed, "%s", o->choices);
        for (char *c = allowed; *c; ++c)
            if (*c == '|')
                *c = ',';
        return cli_usage(args->spec, "%s: must be one of %s", what, allowed);
    }
    *(int *)field(args, i) = k;
    return CLI_OK;
}

/* Store `text` as option i's value.  Messages name it as `what`:
 * "--seq-length 12x", or "--seed abc (from env CPATTN_SEED)". */
static int set_value(const cli_args *args, int i, const char *text, const char *env)
{
    char what[512];
    snprintf(what, sizeof what, "%s %s%s%s%s", args->spec->options[i].flag, text,
             env ? " (from env " : "", env ? env : "", env ? ")" : "");
    switch (args->spec->options[i].type) {
    case CLI_INT: return set_int(args, i, what, text, (int64_t *)field(args, i));
    case CLI_FLOAT: return set_float(args, i, what, text);
    case CLI_STRING: *(const char **)field(args, i) = text; return CLI_OK;
    case CLI_FLAG: return set_flag(args, i, what, text);
    case CLI_CHOICE: return set_choice(args, i, what, text);
    case CLI_INT_LIST: return set_int_list(args, i, what, text);
    }
    return CLI_USAGE;
}

/* ------------------------------------------------------------------------ */
/* Parsing                                                                   */
/* ------------------------------------------------------------------------ */

/* Edit distance between two short strings (for "did you mean"). */
static int edit_distance(const char *a, size_t la, const char *b)
{
    size_t lb = strlen(b);
    int row[128], prev[128];
    if (la >= 128 || lb >= 128)
        return 1000;
    for (size_t j = 0; j <= lb; ++j)
        prev[j] = (int)j;
    for (size_t i = 1; i <= la; ++i) {
        row[0] = (int)i;
        for (size_t j = 1; j <= lb; ++j) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = row[j - 1] + 1;
            row[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, row, (lb + 1) * sizeof row[0]);
    }
    return prev[lb];
}

static int unknown_flag(const cli_spec *spec, const char *arg, size_t len)
{
    int best = -1, best_d = 1000;
    for (int i = 0; i < spec->count; ++i) {
        const char *flag = spec->options[i].flag;
        int d = edit_distance(arg, len, flag);
        if (strncmp(flag, arg, len) == 0 && len > 3)
            d = 1; /* a prefix of a real flag */
        if (d < best_d) {
            best_d = d;
            best = i;
        }
    }
    int limit = (int)len / 3 > 2 ? (int)len / 3 : 2;
    if (best >= 0 && best_d <= limit)
        return cli_usage(spec, "unknown flag %.*s (did you mean %s?); see --help", (int)len, arg,
                         spec->options[best].flag);
    return cli_usage(spec, "unknown flag %.*s; see --help", (int)len, arg);
}

/* 1 if option i of the spec appears among the command-line arguments. */
static int on_command_line(const cli_spec *spec, int i, int argc, char **argv)
{
    for (int k = 1; k < argc; ++k) {
        const char *eq = strchr(argv[k], '=');
        size_t len = eq ? (size_t)(eq - argv[k]) : strlen(argv[k]);
        if (strncmp(argv[k], "--", 2) == 0 && find_option(spec, argv[k], len) == i)
            return 1;
    }
    return 0;
}

/* The "unset" value of option i: the config struct need not be zeroed. */
static void clear_value(const cli_args *args, int i)
{
    void *v = field(args, i);
    switch (args->spec->options[i].type) {
    case CLI_INT: *(int64_t *)v = 0; break;
    case CLI_FLOAT: *(double *)v = 0.0; break;
    case CLI_STRING: *(const char **)v = NULL; break;
    case CLI_FLAG:
    case CLI_CHOICE: *(int *)v = 0; break;
    case CLI_INT_LIST: memset(v, 0, sizeof(cli_int_list)); break;
    }
}

/* Defaults, then environment variables for the options the command line
 * does not set (a flag overrides its variable, which is then not even
 * parsed: a bad CPATTN_THREADS does not matter under --threads 1). */
static int apply_defaults_and_env(cli_args *args, int argc, char **argv)
{
    const cli_spec *spec = args->spec;
    for (int i = 0; i < spec->count; ++i) {
        const cli_option *o = &spec->options[i];
        clear_value(args, i); /* unset: 0, NULL or an empty list, whatever cfg held */
        if (o->def || o->type == CLI_FLAG) { /* a flag without a default is off */
            if (set_value(args, i, o->def ? o->def : "0", NULL) != CLI_OK)
                return CLI_USAGE; /* a bad default in a table is a bug, but say so */
            args->source[i] = CLI_SRC_DEFAULT;
        }
        const char *env = o->env ? getenv(o->env) : NULL;
        if (env && *env && !on_command_line(spec, i, argc, argv)) {
            if (set_value(args, i, env, o->env) != CLI_OK)
                return CLI_USAGE;
            args->source[i] = CLI_SRC_ENV;
        }
    }
    return CLI_OK;
}

/* One "--flag[=value]" at argv[*k]; may consume argv[*k + 1]. */
static int parse_one(cli_args *args, int argc, char **argv, int *k)
{
    const char *arg = argv[*k];
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    int i = find_option(args->spec, arg, len);
    if (i < 0)
        return unknown_flag(args->spec, arg, len);
    const cli_option *o = &args->spec->options[i];
    const char *value = eq ? eq + 1 : NULL;
    if (o->type == CLI_FLAG && !value) {
        *(int *)field(args, i) = 1;
    } else {
        if (!value) {
            if (*k + 1 >= argc || strncmp(argv[*k + 1], "--", 2) == 0)
                return cli_usage(args->spec, "%s: needs a value; see --help", o->flag);
            value = argv[++*k];
        }
        if (set_value(args, i, value, NULL) != CLI_OK)
            return CLI_USAGE;
    }
    args->source[i] = CLI_SRC_ARG;
    return CLI_OK;
}

cli_result cli_parse(cli_args *args, const cli_spec *spec, void *cfg, int argc, char **argv)
{
    assert(spec->count <= CLI_MAX_OPTIONS);
    memset(args, 0, sizeof *args);
    args->spec = spec;
    args->cfg = cfg;
    for (int k = 1; k < argc; ++k) {
        if (strcmp(argv[k], "--help") == 0 || strcmp(argv[k], "-h") == 0) {
            if (!quiet_output)
                cli_print_help(spec, stdout);
            return CLI_HELP;
        }
    }
    if (apply_defaults_and_env(args, argc, argv) != CLI_OK)
        return CLI_USAGE;
    for (int k = 1; k < argc; ++k) {
        if (strncmp(argv[k], "--", 2) != 0 || argv[k][2] == '\0') {
            cli_usage(spec, "unexpected argument '%s' (flags start with --); see --help",
                      argv[k]);
            return CLI_USAGE;
        }
        if (parse_one(args, argc, argv, &k) != CLI_OK)
            return CLI_USAGE;
    }
    return CLI_OK;
}

/* ------------------------------------------------------------------------ */
/* Help and configuration printout                                           */
/* ------------------------------------------------------------------------ */

static const char *metavar(const cli_option *o, char *buf, size_t size)
{
    if (o->metavar)
        return o->metavar;
    switch (o->type) {
    case CLI_INT: return "N";
    case CLI_FLOAT: return "X";
    case CLI_STRING: return "STR";
    case CLI_FLAG: return "";
    case CLI_INT_LIST: return "N,N,...";
    case CLI_CHOICE:
        snprintf(buf, size, "{%s}", o->choices);
        return buf;
    }
    return "";
}

/* Print `text` from column `col`, wrapping at 80 with continuation lines
 * indented to `indent`.  NBSP ('\x01') is a space that never breaks. */
#define NBSP '\x01'

static void print_wrapped(FILE *f, const char *text, int col, int indent)
{
    const char *p = text;
    while (*p) {
        size_t word = strcspn(p, " ");
        if (col > indent && col + 1 + (int)word > 80) {
            fprintf(f, "\n%*s", indent, "");
            col = indent;
        } else if (col > indent) {
            fputc(' ', f);
            ++col;
        }
        for (size_t c = 0; c < word; ++c)
            fputc(p[c] == NBSP ? ' ' : p[c], f);
        col += (int)word;
        p += word;
        while (*p == ' ')
            ++p;
    }
    fputc('\n', f);
}

static void print_option_help(const cli_option *o, FILE *f)
{
    char mv[256], left[320], text[1024];
    snprintf(left, sizeof left, "  %s %s", o->flag, metavar(o, mv, sizeof mv));
    int n = snprintf(text, sizeof text, "%s", o->help);
    if (o->type == CLI_FLAG)
        n += snprintf(text + n, sizeof text - n, " (default:%c%s)", NBSP,
                      o->def && strcmp(o->def, "1") == 0 ? "on" : "off");
    else if (o->def)
        n += snprintf(text + n, sizeof text - n, " (default:%c%s)", NBSP, o->def);
    if (o->env)
        snprintf(text + n, sizeof text - n, " [env%c%s]", NBSP, o->env);
    const int indent = 34;
    fputs(left, f);
    int col = (int)strlen(left);
    if (col + 2 > indent) {
        fprintf(f, "\n%*s", indent, "");
    } else {
        fprintf(f, "%*s", indent - col, "");
    }
    print_wrapped(f, text, indent, indent);
}

void cli_print_help(const cli_spec *spec, FILE *f)
{
    fprintf(f, "usage: %s %s\n", spec->command, spec->synopsis);
    if (spec->description) {
        fputc('\n', f);
        print_wrapped(f, spec->description, 0, 0);
    }
    fprintf(f, "\nflags:\n");
    for (int i = 0; i < spec->count; ++i)
        print_option_help(&spec->options[i], f);
    fprintf(f, "  --help                          print this help and exit\n");
    if (spec->epilog)
        fprintf(f, "\n%s", spec->epilog);
}

static void format_value(const cli_args *args, int i, char *buf, size_t size)
{
    const cli_option *o = &args->spec->options[i];
    const void *v = field(args, i);
    switch (o->type) {
    case CLI_INT: snprintf(buf, size, "%lld", (long long)*(const int64_t *)v); break;
    case CLI_FLOAT: snprintf(buf, size, "%g", *(const double *)v); break;
    case CLI_STRING: {
        const char *s = *(const char *const *)v;
        snprintf(buf, size, "%s", s ? s : "(none)");
        break;
    }
    case CLI_FLAG: snprintf(buf, size, "%s", *(const int *)v ? "on" : "off"); break;
    case CLI_CHOICE: choice_word(o->choices, *(const int *)v, buf, size); break;
    case CLI_INT_LIST: {
        const cli_int_list *l = v;
        size_t n = 0;
        buf[0] = '\0';
        for (int k = 0; k < l->n && n < size; ++k)
            n += snprintf(buf + n, size - n, "%s%lld", k ? "," : "", (long long)l->v[k]);
        break;
    }
    }
}

void cli_print_config(const cli_args *args, FILE *f, const char *prefix)
{
    fprintf(f, "%s%s %s configuration:\n", prefix, args->spec->command, CPA_VERSION_STRING);
    for (int i = 0; i < args->spec->count; ++i) {
        const cli_option *o = &args->spec->options[i];
        char value[512], from[160];
        format_value(args, i, value, sizeof value);
        switch (args->source[i]) {
        case CLI_SRC_UNSET: snprintf(from, sizeof from, "unset"); break;
        case CLI_SRC_DEFAULT: snprintf(from, sizeof from, "default"); break;
        case CLI_SRC_ENV: snprintf(from, sizeof from, "env %s", o->env); break;
        case CLI_SRC_ARG: snprintf(from, sizeof from, "command line"); break;
        case CLI_SRC_DERIVED:
            snprintf(from, sizeof from, "%s", args->note[i] ? args->note[i] : "derived");
            break;
        }
        fprintf(f, "%s  %-28s %-16s (%s)\n", prefix, o->flag, value, from);
    }
    fflush(f);
}
