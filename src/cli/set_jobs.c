/*
 * The tables of a set, K at a time: each is copied by the pgfan command
 * run on that one table, reading through the set's snapshot.  A pair whose
 * server was lost is reloaded (--retries) on the targets that did not
 * commit it, while the other tables go on.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "set_internal.h"

#define interrupted cli_interrupted

typedef struct job {
    pid_t pid; /* 0: free */
    size_t table;
    size_t targets[MAX_TARGETS]; /* set target index of the command's target k */
    size_t ntargets;
    char status[512], errlog[512];
    struct timespec not_before; /* a retry waits a little for its server */
} job;

typedef struct queue {
    job *items;
    size_t n, cap;
} queue;

static char work_dir[256];

static int push(queue *q, const job *j)
{
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 16;
        job *items = realloc(q->items, cap * sizeof *items);
        if (!items)
            return -1;
        q->items = items;
        q->cap = cap;
    }
    q->items[q->n++] = *j;
    return 0;
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* The first queued job that may start now, taken out of the queue. */
static int pop_ready(queue *q, job *out)
{
    double now = now_s();
    for (size_t i = 0; i < q->n; i++) {
        double at = (double)q->items[i].not_before.tv_sec +
                    (double)q->items[i].not_before.tv_nsec / 1e9;
        if (at > now)
            continue;
        *out = q->items[i];
        memmove(q->items + i, q->items + i + 1, (q->n - i - 1) * sizeof *q->items);
        q->n--;
        return 1;
    }
    return 0;
}

/* ---- one table's command ---- */

#define MAX_ARGS (4 * MAX_TARGETS + 40)

static void add(const char **argv, size_t *n, const char *a, const char *b)
{
    if (*n + 3 > MAX_ARGS)
        return;
    argv[(*n)++] = a;
    if (b)
        argv[(*n)++] = b;
    argv[*n] = NULL;
}

static const char *policy_name(pgfan_policy p)
{
    return p == PGFAN_POLICY_DROP ? "drop" : "abort";
}

static const char *format_arg(format_choice f)
{
    static const char *names[] = {"auto", "text", "csv", "binary"};
    return names[f];
}

/* The numbers a command line spells out; they live as long as it. */
typedef struct argv_numbers {
    char stall[32], end[32], slots[32], chunk[32], spill[32];
    char rate[MAX_TARGETS][48];
} argv_numbers;

/* A target's --max-rate is shared by the tables loading into it at once. */
static void add_rates(set_run *s, const job *j, const char **argv, size_t *n,
                      argv_numbers *num)
{
    for (size_t k = 0; k < j->ntargets; k++) {
        uint64_t rate = target_max_rate(&s->r->opt, j->targets[k]);
        if (!rate)
            continue;
        rate /= s->jobs;
        snprintf(num->rate[k], sizeof num->rate[k], "%zu=%llu", k + 1,
                 (unsigned long long)(rate ? rate : 1));
        add(argv, n, "--max-rate", num->rate[k]);
    }
}

/*
 * The tables loading at once share the ring the command has by default
 * (64 slots): each gets 64 / K slots, at least 16, so K jobs hold about
 * as much as one table's command plus the libraries each process maps.
 */
static unsigned int shared_ring_slots(unsigned int jobs)
{
    unsigned int slots = 64;
    while (slots > 16 && slots * jobs > 64)
        slots /= 2;
    return slots;
}

/* The command line of job j: one table, its targets, the set's options. */
static void job_argv(set_run *s, const job *j, const char **argv, argv_numbers *num)
{
    const cli_options *o = &s->r->opt;
    size_t n = 0;
    add(argv, &n, "pgfan", NULL);
    add(argv, &n, "--source", o->source);
    for (size_t k = 0; k < j->ntargets; k++)
        add(argv, &n, "--target", o->targets[j->targets[k]]);
    add(argv, &n, "--table", s->tables[j->table].qualified);
    add(argv, &n, "--snapshot", s->snapshot);
    add(argv, &n, "--set-id", s->set_id);
    add(argv, &n, "--status-file", j->status);
    add(argv, &n, "--on-fault", policy_name(o->on_fault));
    add(argv, &n, "--format", format_arg(o->format));
    add(argv, &n, "--no-progress", NULL);
    add(argv, &n, "--quiet", NULL);
    if (o->atomic)
        add(argv, &n, "--atomic", NULL);
    if (o->truncate)
        add(argv, &n, "--truncate", NULL);
    else if (o->copy_schema)
        add(argv, &n, "--load-fresh", NULL); /* the table is ours: FREEZE it */
    if (o->no_sequences)
        add(argv, &n, "--no-sequences", NULL);
    if (o->enable_row_security)
        add(argv, &n, "--enable-row-security", NULL);
    snprintf(num->stall, sizeof num->stall, "%.3f", o->stall_timeout_ms / 1000.0);
    snprintf(num->slots, sizeof num->slots, "%u",
             o->ring_slots ? o->ring_slots : shared_ring_slots(s->jobs));
    snprintf(num->chunk, sizeof num->chunk, "%zu", o->chunk_size);
    if (o->stall_timeout_ms)
        add(argv, &n, "--stall-timeout", num->stall);
    snprintf(num->end, sizeof num->end, "%.3f", o->end_timeout_ms / 1000.0);
    if (o->end_timeout_ms)
        add(argv, &n, "--end-timeout", num->end);
    snprintf(num->spill, sizeof num->spill, "%llu", (unsigned long long)o->spill_limit);
    add(argv, &n, "--spill-limit", num->spill);
    if (o->spill_dir)
        add(argv, &n, "--spill-dir", o->spill_dir);
    add(argv, &n, "--ring-slots", num->slots);
    if (o->chunk_size)
        add(argv, &n, "--chunk-size", num->chunk);
    add_rates(s, j, argv, &n, num);
}

static int launch(set_run *s, job *j, unsigned int serial)
{
    snprintf(j->status, sizeof j->status, "%s/%u.status", work_dir, serial);
    snprintf(j->errlog, sizeof j->errlog, "%s/%u.err", work_dir, serial);
    const char *argv[MAX_ARGS + 1];
    argv_numbers numbers;
    job_argv(s, j, argv, &numbers);
    pid_t pid = spawn_logged("/proc/self/exe", argv, j->errlog);
    if (pid < 0)
        return -1;
    j->pid = pid;
    for (size_t k = 0; k < j->ntargets; k++)
        s->tables[j->table].pairs[j->targets[k]].attempts++;
    return 0;
}

/* ---- what a command said ---- */

/* The command's stderr, each line naming its table. */
static void relay_errors(set_run *s, const job *j)
{
    FILE *f = fopen(j->errlog, "r");
    char line[4096];
    if (!f)
        return;
    while (fgets(line, sizeof line, f)) {
        const char *text = strncmp(line, "pgfan: ", 7) == 0 ? line + 7 : line;
        const char *target = strstr(text, "target ");
        /* "target K" in the command is its K-th target: name the set's. */
        if (target == text) {
            size_t k = strtoul(text + 7, NULL, 10);
            const char *rest = strchr(text + 7, ' ');
            if (k >= 1 && k <= j->ntargets && rest) {
                fprintf(stderr, "pgfan: %s: target %zu%s", s->tables[j->table].display,
                        j->targets[k - 1] + 1, rest);
                continue;
            }
        }
        fprintf(stderr, "pgfan: %s: %s", s->tables[j->table].display, text);
    }
    fclose(f);
}

/* Splits a tab-separated line in place; returns the number of fields. */
static size_t split_tabs(char *line, char **fields, size_t max)
{
    size_t n = 0;
    line[strcspn(line, "\n")] = '\0';
    while (n < max) {
        fields[n++] = line;
        char *tab = strchr(line, '\t');
        if (!tab)
            break;
        *tab = '\0';
        line = tab + 1;
    }
    return n;
}

/* Reads the status file into the pairs; -1 when there is none. */
static int read_status(set_run *s, const job *j, int *exit_code)
{
    FILE *f = fopen(j->status, "r");
    char line[PGFAN_MESSAGE_MAX + 256], *fld[8];
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f)) {
        size_t n = split_tabs(line, fld, 8);
        if (n >= 2 && strcmp(fld[0], "exit") == 0)
            *exit_code = atoi(fld[1]);
        if (n < 8 || strcmp(fld[0], "target") != 0)
            continue;
        size_t k = strtoul(fld[1], NULL, 10);
        if (k >= j->ntargets)
            continue;
        pair *p = &s->tables[j->table].pairs[j->targets[k]];
        snprintf(p->state, sizeof p->state, "%s", fld[2]);
        p->rows = strtoull(fld[3], NULL, 10);
        p->bytes = strtoull(fld[4], NULL, 10);
        p->seconds = strtod(fld[5], NULL);
        snprintf(p->sqlstate, sizeof p->sqlstate, "%s", fld[6]);
        snprintf(p->error, sizeof p->error, "%s", fld[7]);
    }
    fclose(f);
    return 0;
}

/* One line per table attempt: how many of its targets committed. */
static void say_table(set_run *s, const job *j)
{
    const set_table *t = &s->tables[j->table];
    size_t committed = 0;
    uint64_t rows = 0, bytes = 0;
    double secs = 0;
    for (size_t k = 0; k < j->ntargets; k++) {
        const pair *p = &t->pairs[j->targets[k]];
        if (strcmp(p->state, "committed") != 0)
            continue;
        committed++;
        rows = p->rows;
        bytes = p->bytes > bytes ? p->bytes : bytes;
        secs = p->seconds > secs ? p->seconds : secs;
    }
    if (!s->r->opt.quiet)
        fprintf(stderr,
                "pgfan: %s: committed on %zu of %zu targets, %llu rows, %.1f MB, "
                "%.2f s\n",
                t->display, committed, j->ntargets, (unsigned long long)rows,
                (double)bytes / 1e6, secs);
}

/* A failure that a new connection and a new try can fix: the server or
 * the network went away, not the data. */
static int retryable(const pair *p)
{
    const char *st = p->sqlstate;
    if (!*st)
        return strstr(p->error, "connection") || strstr(p->error, "server closed") ||
               strstr(p->error, "terminat") || strstr(p->error, "no answer") ||
               strstr(p->error, "could not connect");
    return strncmp(st, "08", 2) == 0 || strcmp(st, "57P01") == 0 ||
           strcmp(st, "57P02") == 0 || strcmp(st, "57P03") == 0 ||
           strcmp(st, "53300") == 0 || strcmp(st, "40001") == 0 ||
           strcmp(st, "40P01") == 0;
}

/*
 * After job j ended: the pairs it did not commit go again when the cause
 * can be retried and attempts are left; the others are settled.
 * Returns 1 when j was queued again, 0 when settled, -1 when a pair of it
 * failed for good.
 */
static int settle(set_run *s, job *j, queue *q)
{
    int code = -1, again = 0, hopeless = 0, failed = 0, cause = 0;
    if (read_status(s, j, &code) != 0)
        for (size_t k = 0; k < j->ntargets; k++) {
            pair *p = &s->tables[j->table].pairs[j->targets[k]];
            snprintf(p->state, sizeof p->state, "failed");
            snprintf(p->error, sizeof p->error,
                     "the table's copy ended without saying how (killed?)");
        }
    relay_errors(s, j);
    char progress[600];
    snprintf(progress, sizeof progress, "%s.progress", j->status);
    unlink(progress);
    unlink(j->status);
    unlink(j->errlog);
    job next = *j;
    next.ntargets = 0;
    next.pid = 0;
    for (size_t k = 0; k < j->ntargets; k++) {
        pair *p = &s->tables[j->table].pairs[j->targets[k]];
        if (strcmp(p->state, "committed") == 0 || strcmp(p->state, "unknown") == 0)
            continue;
        failed = 1;
        if (strcmp(p->state, "failed") == 0 || strcmp(p->state, "dropped") == 0) {
            if (retryable(p))
                cause = 1;
            else
                hopeless = 1;
        }
        if (p->attempts <= s->r->opt.retries)
            again = 1;
        next.targets[next.ntargets++] = j->targets[k];
    }
    say_table(s, j);
    if (!failed)
        return 0;
    if (again && cause && !hopeless && !interrupted) {
        clock_gettime(CLOCK_MONOTONIC, &next.not_before);
        next.not_before.tv_sec += 1 + s->tables[j->table].pairs[next.targets[0]].attempts;
        if (push(q, &next) == 0) {
            fprintf(
                stderr, "pgfan: %s: loading again on %zu target%s (attempt %u of %u)\n",
                s->tables[j->table].display, next.ntargets, next.ntargets > 1 ? "s" : "",
                s->tables[j->table].pairs[next.targets[0]].attempts + 1,
                s->r->opt.retries + 1);
            return 1;
        }
    }
    return -1;
}

/* ---- the loop ---- */

static unsigned int default_jobs(size_t ntables)
{
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned int k = cores > 1 ? (unsigned int)cores : 2;
    if (k > 8)
        k = 8;
    return ntables < k ? (unsigned int)ntables : k;
}

static void stop_all(job *running, unsigned int k)
{
    for (unsigned int i = 0; i < k; i++)
        if (running[i].pid > 0)
            kill(running[i].pid, SIGTERM);
}

/* Rows and bytes a running table's command has read so far. */
static void job_progress(const job *j, double *rows, double *bytes)
{
    char path[600], line[64];
    unsigned long long r = 0, b = 0;
    snprintf(path, sizeof path, "%s.progress", j->status);
    FILE *f = fopen(path, "r");
    if (f && fgets(line, sizeof line, f) && sscanf(line, "%llu %llu", &r, &b) == 2) {
        *rows = (double)r;
        *bytes = (double)b;
    }
    if (f)
        fclose(f);
}

/*
 * Tables done, running and left; the share of the set done, counting a
 * running table's rows read against its estimate; the COPY bytes moved and
 * their rate; the time left at that pace.
 */
static void draw_progress(set_run *s, const job *running, unsigned int k, size_t queued,
                          double started, int tty)
{
    size_t done = 0, busy = 0;
    double bytes_done = 0, total = 0, moved = 0;
    for (size_t t = 0; t < s->ntables; t++) {
        int all = 1;
        for (size_t i = 0; i < s->r->opt.ntargets; i++)
            all &= pair_done(&s->tables[t].pairs[i]);
        total += s->tables[t].size;
        if (all) {
            done++;
            bytes_done += s->tables[t].size;
            moved += (double)table_bytes(&s->tables[t]);
        }
    }
    for (unsigned int i = 0; i < k; i++) {
        if (running[i].pid <= 0)
            continue;
        double rows = 0, bytes = 0, est = s->tables[running[i].table].rows_estimate;
        busy++;
        job_progress(&running[i], &rows, &bytes);
        moved += bytes;
        double share = est > 0 ? rows / est : 0;
        bytes_done += s->tables[running[i].table].size * (share < 1 ? share : 1);
    }
    double secs = now_s() - started;
    double share = total > 0 ? bytes_done / total : 0;
    double eta = share > 0.001 ? secs * (1 - share) / share : -1;
    fprintf(stderr,
            "%stables: %zu done, %zu running, %zu left; %.0f%%, %.1f MB read, %.1f MB/s",
            tty ? "\r\033[K" : "", done, busy, queued, share * 100, moved / 1e6,
            secs > 0 ? moved / 1e6 / secs : 0);
    if (eta >= 0)
        fprintf(stderr, ", ETA %.0f s", eta);
    fputs(tty ? "" : "\n", stderr);
}

static int make_work_dir(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(work_dir, sizeof work_dir, "%s/pgfan-set.XXXXXX",
             tmp && *tmp ? tmp : "/tmp");
    return mkdtemp(work_dir) ? 0 : -1;
}

/* The pairs not yet loaded, one job per table, biggest table first. */
static int queue_tables(set_run *s, queue *q)
{
    for (size_t t = 0; t < s->ntables; t++) {
        job j = {.table = t};
        for (size_t i = 0; i < s->r->opt.ntargets; i++)
            if (!pair_done(&s->tables[t].pairs[i]))
                j.targets[j.ntargets++] = i;
        if (j.ntargets && push(q, &j) != 0)
            return -1;
    }
    return 0;
}

int copy_set(set_run *s)
{
    const cli_options *o = &s->r->opt;
    queue q = {0};
    unsigned int k = o->jobs ? o->jobs : default_jobs(s->ntables), serial = 0;
    s->jobs = k;
    job *running = calloc(k, sizeof *running);
    int tty = isatty(STDERR_FILENO);
    int show = !o->quiet && (o->progress == 1 || (o->progress == -1 && tty));
    int stopping = 0;
    char pid[24];
    if (!running || make_work_dir() != 0 || queue_tables(s, &q) != 0) {
        fprintf(stderr, "pgfan: cannot prepare the table set's work: %s\n",
                strerror(errno));
        free(running);
        free(q.items);
        return EXIT_FAILED;
    }
    snprintf(pid, sizeof pid, "%ld", (long)getpid());
    setenv("PGFAN_COORDINATOR_PID", pid, 1);
    double started = now_s(), drawn = 0;
    for (;;) {
        size_t busy = 0;
        for (unsigned int i = 0; i < k; i++)
            busy += running[i].pid > 0;
        if (interrupted && !stopping) {
            stopping = 1;
            stop_all(running, k);
            q.n = 0;
        }
        for (unsigned int i = 0; i < k && !stopping; i++) {
            job j;
            if (running[i].pid == 0 && pop_ready(&q, &j)) {
                if (launch(s, &j, serial++) == 0) {
                    running[i] = j;
                    busy++;
                }
            }
        }
        if (busy == 0 && q.n == 0)
            break;
        int status;
        pid_t done = waitpid(-1, &status, WNOHANG);
        if (done <= 0) {
            struct timespec nap = {0, 100 * 1000 * 1000};
            nanosleep(&nap, NULL);
        }
        for (unsigned int i = 0; done > 0 && i < k; i++) {
            if (running[i].pid != done)
                continue;
            running[i].pid = 0;
            if (show && tty)
                fputs("\r\033[K", stderr);
            if (settle(s, &running[i], &q) < 0 && o->on_fault == PGFAN_POLICY_ABORT &&
                !stopping) {
                fprintf(stderr,
                        "pgfan: %s failed: no other table starts (--on-fault "
                        "abort); --resume loads what is left\n",
                        s->tables[running[i].table].display);
                stopping = 1;
                stop_all(running, k);
                q.n = 0;
            }
        }
        if (show && now_s() - drawn >= (tty ? 0.25 : 5.0)) {
            drawn = now_s();
            draw_progress(s, running, k, q.n, started, tty);
        }
    }
    if (show && tty)
        fputs("\r\033[K", stderr);
    rmdir(work_dir);
    free(running);
    free(q.items);
    return 0;
}
