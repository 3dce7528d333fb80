/* Running the pgfan command from tests: its exit code, stdout and stderr. */
#ifndef PGFAN_CLITEST_H
#define PGFAN_CLITEST_H

#include <sys/types.h>

typedef struct cli_run {
    int code;
    char *out;
    char *err;
    long peak_rss_kb; /* the run's peak resident set (wait4) */
} cli_run;

/* Runs $PGFAN_CLI with NULL-terminated arguments and waits for it. */
cli_run run_cli(const char *first, ...);
/* The same with argv (argv[0] included, NULL-terminated). */
cli_run run_cli_argv(char *const argv[]);
/* Runs it with argv (argv[0] included), stdout and stderr to these files. */
pid_t cli_spawn(char *const argv[], const char *out, const char *err);
/* Waits for a spawned run and reads (then removes) its output files. */
cli_run cli_finish(pid_t pid, const char *out, const char *err);
void cli_free(cli_run *r);
/* A whole file, NUL-terminated. */
char *cli_slurp(const char *path);

#endif
