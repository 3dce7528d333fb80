/*
 * A model of the broadcast ring's protocol (src/ring.c, src/wake.c), checked
 * with spin by `make check` (tests/check-ring-model.sh).
 *
 * One writer, two readers, NSLOTS slots, TOTAL slots published, head
 * stored once per PUBLISH filled slots (and before the writer idles or
 * ends), wake-ups batched by BATCH.  Reader 1 may step out of the gating set and back in at
 * any point where it holds no slot, as a paused or stalled receiver does.
 * Every statement between two labels of C code is one step here; loads and
 * stores of the atomics are separate steps, so spin explores every
 * interleaving of them.  The model is sequentially consistent: it checks
 * the protocol's logic, which the C code gets through seq_cst on the E3/E4
 * edges and acquire/release on E1/E2 (ring.h).
 *
 * What spin proves:
 *  - no reader reads a slot that is not published or is being written
 *    (assertion in read_slot: the slot holds its own sequence number);
 *  - a reader that stays in reads every slot, the last partial publish
 *    batch included, before it sees the end;
 *  - no slot is overwritten while a gating reader may still read it
 *    (the value is checked again after the read);
 *  - no lost wake-up: there is no state where everybody sleeps although
 *    somebody could go on (spin's invalid end-state check), including while
 *    the writer sits idle waiting for its source (`idle` below).
 */
#define NSLOTS  4
#ifndef BATCH
#define BATCH   3
#endif
#ifndef PUBLISH
#define PUBLISH 2
#endif
#define TOTAL   5
#define NREADERS 2
#define OPEN    0
#define ENDED   1

byte head = 0;                  /* slots < head are published */
byte state = OPEN;
byte epoch = 0;
byte cursor[NREADERS];
bit gating[NREADERS];
byte data[NSLOTS];              /* sequence number held by each slot; 255 = being written */

/* Waiters: `want` (0 = awake; else the counter value awaited, stored + 1
 * so that 0 stays free), and `kick` standing for the eventfd counter. */
byte want_r[NREADERS];
bit kick_r[NREADERS];
byte want_w = 0;
bit kick_w = 0;

/* fan_waiter_notify_at(): wake if the awaited value is reached. */
inline notify_at_reader(i, value) {
    atomic {
        if
        :: want_r[i] != 0 && value + 1 >= want_r[i] -> want_r[i] = 0; kick_r[i] = 1
        :: else -> skip
        fi
    }
}

inline notify_at_writer(value) {
    atomic {
        if
        :: want_w != 0 && value + 1 >= want_w -> want_w = 0; kick_w = 1
        :: else -> skip
        fi
    }
}

inline notify_writer() {
    atomic {
        if
        :: want_w != 0 -> want_w = 0; kick_w = 1
        :: else -> skip
        fi
    }
}

/* ---- writer ---- */

byte next = 0;
byte published = 0;
byte cached_min = 0;
byte seen_epoch = 0;
bool space;

/* scan_min(): gating flags and cursors are loaded one at a time. */
byte wi, wc, wm, we, wj;           /* the writer's temporaries, reset after use */

inline scan_min() {
    wm = next;
    wi = 0;
    do
    :: wi < NREADERS ->
        if
        :: gating[wi] ->
            wc = cursor[wi];
            if
            :: next - wc > next - wm -> wm = wc
            :: else -> skip
            fi
        :: else -> skip
        fi;
        wi++
    :: else -> break
    od;
    cached_min = wm;
    d_step { wi = 0; wc = 0; wm = 0 }
}

/* space_free(force) */
inline space_free(force) {
    we = epoch;
    if
    :: !force && we == seen_epoch && next - cached_min < NSLOTS -> space = true
    :: else ->
        seen_epoch = we;
        scan_min();
        space = (next - cached_min < NSLOTS)
    fi;
    we = 0
}

/* publish_head(): store head = next if slots were filled since. */
inline publish_head() {
    if
    :: published != next ->
        published = next;
        head = next;
        wj = 0;
        do
        :: wj < NREADERS -> notify_at_reader(wj, next); wj++
        :: else -> wj = 0; break
        od
    :: else -> skip
    fi
}

/* fan_ring_flush(): publish, then wake every reader asleep below head. */
inline flush() {
    publish_head();
    wj = 0;
    do
    :: wj < NREADERS -> notify_at_reader(wj, next + BATCH - 1); wj++
    :: else -> wj = 0; break
    od
}

/* fan_ring_publish(): head moves once PUBLISH slots are filled. */
inline publish() {
    next++;
    if
    :: next - published >= PUBLISH -> publish_head()
    :: else -> skip
    fi
}

proctype writer()
{
    do
    :: next < TOTAL ->
        /* fan_ring_wait_space() */
        do
        :: space_free(false);
           if
           :: space -> break
           :: else ->
               flush();
               want_w = next - NSLOTS + BATCH + 1;
               space_free(true);
               if
               :: space -> want_w = 0; break
               :: else ->
                   kick_w; kick_w = 0;   /* sleep until kicked */
                   want_w = 0
               fi
           fi
        od;
        /* claim and fill: no gating reader may still need this slot */
        data[next % NSLOTS] = 255;
        data[next % NSLOTS] = next;
        publish();
        /* The source may go silent until the readers have consumed every
         * filled slot (the adversarial case for batched publishing and
         * wake-ups): the writer flushes first, as the producer does before
         * it waits for its source. */
        if
        :: true -> skip
        :: true ->
            flush();
            (gating[0] == 0 || cursor[0] == next) && (gating[1] == 0 || cursor[1] == next)
        fi
    :: else -> break
    od;
    /* fan_ring_close(ENDED): publishes, then wakes every reader */
    publish_head();
    state = ENDED;
    wj = 0;
    do
    :: wj < NREADERS ->
        atomic {
            if
            :: want_r[wj] != 0 -> want_r[wj] = 0; kick_r[wj] = 1
            :: else -> skip
            fi
        };
        wj++
    :: else -> wj = 0; break
    od
}

/* ---- readers ---- */

inline read_slot(id, c) {
    assert(data[c % NSLOTS] == c);      /* published and not being written */
    assert(data[c % NSLOTS] == c)       /* not overwritten while it was read */
}

proctype reader(byte id; bit may_step_out)
{
    byte c = 0;
    byte h;
    bit stepped = 0;
    do
    :: c != head ->             /* E1: load head, then the slot */
        read_slot(id, c);
        c++;
        cursor[id] = c;         /* E2: release the slot */
        notify_at_writer(c)
    :: c == head && state == ENDED && head == c ->
        assert(c == TOTAL);     /* the last, partial batch was published */
        break
    :: c == head && state == OPEN ->
        /* fan_ring_wait_data(): announce, re-check, sleep or cancel */
        want_r[id] = c + BATCH + 1;
        if
        :: head != c || state != OPEN -> want_r[id] = 0
        :: else -> kick_r[id]; kick_r[id] = 0; want_r[id] = 0
        fi
    :: may_step_out && !stepped ->
        /* fan_ring_leave(), later fan_ring_join() */
        stepped = 1;
        gating[id] = 0;
        notify_writer();
        gating[id] = 1;
        epoch++;
        h = head;
        if
        :: h - c + PUBLISH > NSLOTS -> /* may be overwritten: out for good */
            gating[id] = 0;
            notify_writer();
            break
        :: else -> h = 0
        fi
    od
}

init {
    gating[0] = 1;
    gating[1] = 1;
    byte s = 0;
    do
    :: s < NSLOTS -> data[s] = 254; s++   /* nothing published yet */
    :: else -> break
    od;
    atomic {
        run writer();
        run reader(0, 0);
        run reader(1, 1)
    }
}
