#include "progress.h"

static double rate(uint64_t bytes, double seconds)
{
    return seconds > 0 ? (double)bytes / 1e6 / seconds : 0.0;
}

static void total_line(progress_view *v, const pgfan_progress *p)
{
    fprintf(v->out, "total: %llu rows, %.1f MB, %.1f MB/s, %.1f s",
            (unsigned long long)p->producer_rows, (double)p->producer_bytes / 1e6,
            rate(p->producer_bytes, p->seconds), p->seconds);
    if (v->estimated_rows > 0 && p->producer_rows > 0 && !p->producer_done) {
        double done = (double)p->producer_rows / v->estimated_rows;
        if (done < 1.0) {
            double eta = p->seconds / done - p->seconds;
            fprintf(v->out, ", ETA %d:%02d", (int)eta / 60, (int)eta % 60);
        }
    }
}

void progress_draw(progress_view *v, const pgfan_manager *m)
{
    pgfan_progress p;
    if (pgfan_manager_progress(m, &p) != PGFAN_OK)
        return;
    if (!v->tty) {
        if (p.seconds - v->last_line_at < 1.0)
            return;
        v->last_line_at = p.seconds;
        total_line(v, &p);
        fputc('\n', v->out);
        fflush(v->out);
        return;
    }
    if (v->lines > 0)
        fprintf(v->out, "\033[%dA", v->lines);
    size_t n = pgfan_manager_receiver_count(m);
    for (size_t i = 0; i < n; i++) {
        pgfan_receiver_result r;
        pgfan_manager_receiver(m, i, &r);
        const char *table = v->tables && v->tables[i] ? v->tables[i] : "";
        fprintf(v->out,
                "\r\033[K  target %zu: %-8s %12llu rows %10.1f MB %8.1f MB/s  lag %-3llu "
                "%s\n",
                i + 1, pgfan_receiver_state_name(r.state), (unsigned long long)r.rows,
                (double)r.bytes / 1e6, rate(r.bytes, r.seconds),
                (unsigned long long)r.lag, table);
    }
    fputs("\r\033[K", v->out);
    total_line(v, &p);
    fputc('\n', v->out);
    v->lines = (int)n + 1;
    fflush(v->out);
}

void progress_clear(progress_view *v)
{
    if (v->tty && v->lines > 0) {
        fprintf(v->out, "\033[%dA\033[J", v->lines);
        fflush(v->out);
    }
    v->lines = 0;
}
