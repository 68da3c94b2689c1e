/*
 * blas_setup.c — make OpenBLAS run the kernels this CPU deserves, before
 * anything else happens in the process.
 *
 * OpenBLAS picks its kernel family when it is loaded and honours
 * OPENBLAS_CORETYPE only then, so a wrong pick can only be corrected by
 * starting again.  At the very start of main() (before MPI_Init, so under
 * mpiexec every rank does it on its own and the launcher never notices):
 *
 *   1. the user set OPENBLAS_CORETYPE                -> obeyed, nothing changes;
 *   2. CPATTN_BLAS_FIX=0                             -> only reported;
 *   3. the kernels in use fit the CPU                -> nothing to do;
 *   4. otherwise a child process (this program with CPATTN_BLAS_SELFTEST=1)
 *      loads OpenBLAS with the fitting OPENBLAS_CORETYPE and checks a small
 *      sgemm against a plain loop; if it passes, the program re-executes
 *      itself once with that OPENBLAS_CORETYPE and CPATTN_BLAS_RESTARTED
 *      set.  CPATTN_BLAS_RESTARTED forbids a second restart, whatever
 *      happens.  If the child fails or crashes, the program keeps the slow
 *      kernels and says so.
 *
 * tool_blas_note() is the line for the configuration block.  Testing hooks:
 * CPATTN_BLAS_PRETEND_CORE (see src/core/blas.c) and
 * CPATTN_BLAS_SELFTEST_FAIL=1 (the self-test child reports failure).
 */
#include "util.h"

#include "cpattn.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char note[512];

const char *tool_blas_note(void) { return note; }

/* Run this program as the self-test child with OPENBLAS_CORETYPE=core;
 * 1 if it reported a correct sgemm. */
static int child_selftest(const char *argv0, const char *core)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return 0;
    if (pid == 0) {
        setenv("OPENBLAS_CORETYPE", core, 1);
        setenv("CPATTN_BLAS_SELFTEST", "1", 1);
        char *const args[] = {(char *)argv0, NULL};
        execv("/proc/self/exe", args);
        _exit(127);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        return 0;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

void tool_blas_setup(int argc, char **argv)
{
    (void)argc;
    if (getenv("CPATTN_BLAS_SELFTEST")) /* the child of child_selftest() */
        exit(cpa_blas_selftest() && !getenv("CPATTN_BLAS_SELFTEST_FAIL") ? 0 : 3);

    cpa_blas_report r;
    cpa_blas_inspect(&r);
    const char *restarted = getenv("CPATTN_BLAS_RESTARTED");
    if (restarted) {
        /* We are the restarted program: report, never restart again. */
        snprintf(note, sizeof note, "OpenBLAS chose %s for this CPU; restarted once with "
                 "OPENBLAS_CORETYPE=%s (self-test passed): %s kernels in use%s", restarted,
                 getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "?", r.core,
                 r.below_cpu ? ", STILL below the CPU" : "");
        return;
    }
    if (r.user_set) {
        snprintf(note, sizeof note, "OPENBLAS_CORETYPE=%s set by the user: obeyed (%s kernels in "
                 "use%s%s)", getenv("OPENBLAS_CORETYPE"), r.core,
                 r.below_cpu ? "; this CPU could run " : "", r.below_cpu ? r.cpu_family : "");
        return;
    }
    if (!r.below_cpu) {
        snprintf(note, sizeof note, "%s", r.message);
        return;
    }
    const char *fix = getenv("CPATTN_BLAS_FIX");
    if (fix && !strcmp(fix, "0")) {
        snprintf(note, sizeof note, "WARNING: %s (CPATTN_BLAS_FIX=0: not corrected)", r.message);
        return;
    }
    if (!child_selftest(argv[0], r.cpu_family)) {
        snprintf(note, sizeof note, "WARNING: %s; OPENBLAS_CORETYPE=%s failed its self-test here, "
                 "so the slow kernels stay", r.message, r.cpu_family);
        return;
    }
    setenv("OPENBLAS_CORETYPE", r.cpu_family, 1);
    setenv("CPATTN_BLAS_RESTARTED", r.core, 1);
    fflush(NULL);
    execv("/proc/self/exe", argv);
    /* Only reached if the exec failed: carry on with the slow kernels. */
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv("CPATTN_BLAS_RESTARTED");
    snprintf(note, sizeof note, "WARNING: %s; restarting with OPENBLAS_CORETYPE=%s failed",
             r.message, r.cpu_family);
}

void tool_say_platform(cpa_isa isa)
{
    const char *env = getenv("CPATTN_ISA");
    tool_say("# kernels: %s (%s; CPATTN_ISA=scalar|avx2|avx512 forces one)\n", cpa_isa_name(isa),
             env && *env ? "chosen by CPATTN_ISA" : "the widest this CPU runs");
    tool_say("# blas: %s\n", tool_blas_note());
}
