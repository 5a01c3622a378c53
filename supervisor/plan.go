package supervisor

import (
	"cmp"
	"slices"
	"time"
)

// wview is what the pool plan needs to know of one worker.
type wview struct {
	pid       int
	slot      int
	gen       int
	state     wstate
	recycling bool // being recycled: replaced like an old generation's worker
	born      time.Time
}

// pool is the input of planPool: the workers and what is wanted of them.
type pool struct {
	workers   []wview
	target    int          // the generation every slot should run
	want      int          // workers wanted in the target generation
	surge     int          // at most want+surge processes, stopping ones included
	canary    bool         // a forward rollout: one target worker until one is ready
	scheduled map[int]bool // slots waiting out a crash backoff
}

// plan is what to do now: slots to start a target worker in, and pids to
// ask to stop.
type plan struct {
	start []int
	stop  []int
}

// planPool decides the next step toward a pool of `want` ready workers of
// the target generation, never going below `want` ready workers (old ones
// count) and never above want+surge processes (invariants 1-2):
//  1. old workers (of another generation, or being recycled) and workers
//     in slots >= want (after a scale down) that are not ready stop at
//     once: they add no capacity;
//  2. the ready ones among them stop one by one while the ready count
//     stays at or above want without them — and, in a canary rollout, only
//     once a target worker is ready; those whose slot a ready target
//     worker holds go first, then the highest slot, then the oldest
//     generation. Before the canary starts, in a rollout to fewer workers
//     than run, those in slots >= want stop as far as the canary needs
//     room within want+surge;
//  3. free target slots (no live target worker, no backoff) get a worker
//     while the process count allows, and in a canary rollout only one
//     until a target worker is ready: empty slots first (lost capacity),
//     then those whose old worker is the oldest, then the lowest.
func planPool(p pool) plan {
	var out plan
	procs := len(p.workers)
	readyT, liveT := 0, 0
	held := make([]bool, p.want)      // slots with a live target worker (a target worker's slot is below want)
	readyHeld := make([]bool, p.want) // slots with a ready target worker
	covered := func(slot int) bool { return slot < p.want && readyHeld[slot] }
	var oldReady []wview
	for _, w := range p.workers {
		switch {
		case w.state == wStopping:
		case w.gen == p.target && w.slot >= p.want && w.state != wReady:
			out.stop = append(out.stop, w.pid)
		case w.gen == p.target && w.slot >= p.want:
			oldReady = append(oldReady, w)
		case w.gen == p.target && !w.recycling:
			liveT++
			held[w.slot] = true
			if w.state == wReady {
				readyT++
				readyHeld[w.slot] = true
			}
		case w.state != wReady:
			out.stop = append(out.stop, w.pid)
		default:
			oldReady = append(oldReady, w)
		}
	}
	if !p.canary || readyT > 0 {
		// Sorted only when some stop: most turns of a big rollout stop
		// none, and the sort was most of a turn.
		if readyT+len(oldReady)-1 < p.want {
			oldReady = nil
		}
		slices.SortFunc(oldReady, func(a, b wview) int {
			ca, cb := covered(a.slot), covered(b.slot)
			if ca != cb {
				if ca {
					return -1
				}
				return 1
			}
			return cmp.Or(b.slot-a.slot, a.gen-b.gen, a.pid-b.pid)
		})
		for len(oldReady) > 0 && readyT+len(oldReady)-1 >= p.want {
			out.stop = append(out.stop, oldReady[0].pid)
			oldReady = oldReady[1:]
		}
	} else if liveT == 0 {
		// A rollout to fewer workers than run (a reload after a scale
		// up, or of a config with fewer): the canary needs room within
		// want+surge, so old workers in slots the target drops stop
		// first, highest first, as far as that room needs and while want
		// stay ready without them. Without this the canary never starts.
		live := -len(out.stop) // processes that are not on their way out
		for _, w := range p.workers {
			if w.state != wStopping {
				live++
			}
		}
		slices.SortFunc(oldReady, func(a, b wview) int { return cmp.Or(b.slot-a.slot, a.gen-b.gen, a.pid-b.pid) })
		for len(oldReady) > 0 && oldReady[0].slot >= p.want && live >= p.want+p.surge && len(oldReady)-1 >= p.want {
			out.stop = append(out.stop, oldReady[0].pid)
			oldReady = oldReady[1:]
			live--
		}
	}
	if procs >= p.want+p.surge || (p.canary && readyT == 0 && liveT > 0) {
		return out // nothing may start: no need to rank the free slots
	}
	occupied := map[int]time.Time{} // slot -> birth of its oldest old worker
	for _, w := range p.workers {
		if w.state != wStopping && (w.gen != p.target || w.recycling) {
			if b, ok := occupied[w.slot]; !ok || w.born.Before(b) {
				occupied[w.slot] = w.born
			}
		}
	}
	var free []int
	for s := 0; s < p.want; s++ {
		if !held[s] && !p.scheduled[s] {
			free = append(free, s)
		}
	}
	slices.SortStableFunc(free, func(a, b int) int {
		ba, oa := occupied[a]
		bb, ob := occupied[b]
		switch {
		case oa != ob:
			if ob {
				return -1
			}
			return 1
		case oa:
			return ba.Compare(bb)
		}
		return 0
	})
	for _, s := range free {
		if procs >= p.want+p.surge || (p.canary && readyT == 0 && liveT > 0) {
			break
		}
		out.start = append(out.start, s)
		procs++
		liveT++
	}
	return out
}
