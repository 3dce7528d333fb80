/* Running the pgfan command from tests. */
#include "clitest.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <check.h>

char *cli_slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = calloc(1, (size_t)n + 1);
    ck_assert_uint_eq(fread(s, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    return s;
}

static const char *cli_path(void)
{
    const char *p = getenv("PGFAN_CLI");
    ck_assert_msg(p && *p, "PGFAN_CLI must name the pgfan binary");
    return p;
}

pid_t cli_spawn(char *const argv[], const char *out, const char *err)
{
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int o = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int e = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(o, 1);
        dup2(e, 2);
        execv(cli_path(), argv);
        _exit(127);
    }
    return pid;
}

cli_run cli_finish(pid_t pid, const char *out, const char *err)
{
    int status;
    struct rusage ru;
    cli_run r;
    ck_assert_int_eq(wait4(pid, &status, 0, &ru), pid);
    r.peak_rss_kb = ru.ru_maxrss;
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.out = cli_slurp(out);
    r.err = cli_slurp(err);
    unlink(out);
    unlink(err);
    return r;
}

/* Runs pgfan with NULL-terminated arguments. */
cli_run run_cli_argv(char *const argv[])
{
    char out[] = "/tmp/pgfan-cli-out.XXXXXX", err[] = "/tmp/pgfan-cli-err.XXXXXX";
    close(mkstemp(out));
    close(mkstemp(err));
    return cli_finish(cli_spawn(argv, out, err), out, err);
}

cli_run run_cli(const char *first, ...)
{
    char *argv[64];
    int n = 0;
    va_list ap;
    argv[n++] = (char *)"pgfan";
    va_start(ap, first);
    for (const char *a = first; a && n < 63; a = va_arg(ap, const char *))
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    return run_cli_argv(argv);
}

void cli_free(cli_run *r)
{
    free(r->out);
    free(r->err);
}
