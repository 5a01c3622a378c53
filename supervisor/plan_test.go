package supervisor

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

func TestPlanPool(t *testing.T) {
	r, s, st := wReady, wStarting, wStopping
	w := func(pid, slot, gen int, state wstate) wview {
		return wview{pid: pid, slot: slot, gen: gen, state: state}
	}
	// d is a worker due for recycling, born at second born.
	d := func(pid, slot, gen int, state wstate, born int64) wview {
		return wview{pid: pid, slot: slot, gen: gen, state: state, recycling: true, born: time.Unix(born, 0)}
	}
	for _, tc := range []struct {
		name  string
		p     pool
		start []int
		stop  []int
	}{
		{"boot starts every slot", pool{target: 1, want: 3, surge: 1}, []int{0, 1, 2}, nil},
		{"a crashed slot is refilled", pool{workers: []wview{w(11, 1, 1, r)}, target: 1, want: 2, surge: 1}, []int{0}, nil},
		{"a slot in backoff waits", pool{workers: []wview{w(11, 1, 1, r)}, target: 1, want: 2, surge: 1, scheduled: map[int]bool{0: true}}, nil, nil},
		{"a self-leaving worker is replaced within the surge",
			pool{workers: []wview{w(10, 0, 1, st), w(11, 1, 1, r)}, target: 1, want: 2, surge: 1}, []int{0}, nil},
		{"canary first", pool{workers: []wview{w(10, 0, 1, r), w(11, 1, 1, r)}, target: 2, want: 2, surge: 1, canary: true}, []int{0}, nil},
		{"canary first even with room for more",
			pool{workers: []wview{w(10, 0, 1, r), w(11, 1, 1, r), w(12, 2, 1, r), w(13, 3, 1, r)}, target: 2, want: 4, surge: 2, canary: true}, []int{0}, nil},
		{"nothing while the canary starts",
			pool{workers: []wview{w(10, 0, 1, r), w(11, 1, 1, r), w(20, 0, 2, s)}, target: 2, want: 2, surge: 1, canary: true}, nil, nil},
		{"canary ready: its slot's old worker stops, no room to start",
			pool{workers: []wview{w(10, 0, 1, r), w(11, 1, 1, r), w(20, 0, 2, r)}, target: 2, want: 2, surge: 1, canary: true}, nil, []int{10}},
		{"the stopping old worker still counts as a process",
			pool{workers: []wview{w(10, 0, 1, st), w(11, 1, 1, r), w(20, 0, 2, r)}, target: 2, want: 2, surge: 1, canary: true}, nil, nil},
		{"once it is gone the next slot starts",
			pool{workers: []wview{w(11, 1, 1, r), w(20, 0, 2, r)}, target: 2, want: 2, surge: 1, canary: true}, []int{1}, nil},
		{"surge 2 after the canary: the next one starts while an old one drains",
			pool{workers: []wview{w(10, 0, 1, st), w(11, 1, 1, r), w(12, 2, 1, r), w(13, 3, 1, r), w(20, 0, 2, r)}, target: 2, want: 4, surge: 2, canary: true}, []int{1}, nil},
		{"old workers not ready stop at once",
			pool{workers: []wview{w(10, 0, 1, r), w(11, 1, 1, s), w(20, 0, 2, s)}, target: 2, want: 2, surge: 1, canary: true}, nil, []int{11}},
		{"rollback: the failed generation's starting worker stops, its ready one stays until covered",
			pool{workers: []wview{w(11, 1, 1, r), w(20, 0, 2, r), w(21, 1, 2, s)}, target: 1, want: 2, surge: 1}, nil, []int{21}},
		{"rollback: refill the stable generation",
			pool{workers: []wview{w(11, 1, 1, r), w(20, 0, 2, r)}, target: 1, want: 2, surge: 1}, []int{0}, nil},
		{"rollback: the failed ready worker stops once covered",
			pool{workers: []wview{w(11, 1, 1, r), w(12, 0, 1, r), w(20, 0, 2, r)}, target: 1, want: 2, surge: 1}, nil, []int{20}},
		{"scale down stops the highest slots",
			pool{workers: []wview{w(10, 0, 1, r), w(11, 1, 1, r), w(12, 2, 1, r)}, target: 1, want: 2, surge: 1}, nil, []int{12}},
		{"scale down keeps want ready: the highest slot stops once a lower one is ready",
			pool{workers: []wview{w(10, 0, 1, s), w(11, 1, 1, r)}, target: 1, want: 1, surge: 1}, nil, nil},
		{"scale down: a starting worker in a removed slot stops at once",
			pool{workers: []wview{w(10, 0, 1, r), w(11, 1, 1, s)}, target: 1, want: 1, surge: 1}, nil, []int{11}},
		{"a reload to fewer workers keeps want ready",
			pool{workers: []wview{w(10, 0, 1, r), w(11, 1, 1, r), w(12, 2, 1, r), w(13, 3, 1, r), w(20, 0, 2, r)}, target: 2, want: 2, surge: 1, canary: true},
			nil, []int{10, 13, 12}},
		{"a worker due for recycling is replaced first, then stopped",
			pool{workers: []wview{d(10, 0, 1, r, 1), w(11, 1, 1, r)}, target: 1, want: 2, surge: 1}, []int{0}, nil},
		{"once its replacement is ready the due worker stops",
			pool{workers: []wview{d(10, 0, 1, r, 1), w(11, 1, 1, r), w(12, 0, 1, r)}, target: 1, want: 2, surge: 1}, nil, []int{10}},
		{"two due with surge 1: one at a time, the oldest first",
			pool{workers: []wview{d(10, 0, 1, r, 5), d(11, 1, 1, r, 2)}, target: 1, want: 2, surge: 1}, []int{1}, nil},
		{"an empty slot before a due one",
			pool{workers: []wview{d(10, 0, 1, r, 1)}, target: 1, want: 2, surge: 1}, []int{1, 0}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := planPool(tc.p)
			if !slices.Equal(got.start, tc.start) || !slices.Equal(got.stop, tc.stop) {
				t.Errorf("planPool = start %v stop %v; want start %v stop %v", got.start, got.stop, tc.start, tc.stop)
			}
		})
	}
}

// Driving planPool step by step through a whole rollout (each started
// worker becomes ready, each stopped one exits) keeps the invariants at
// every step and ends with only target workers.
func TestPlanPoolRolloutInvariants(t *testing.T) {
	for _, c := range []struct{ want, surge int }{{1, 1}, {2, 1}, {4, 1}, {4, 2}, {8, 2}, {5, 5}} {
		t.Run(fmt.Sprintf("want%d_surge%d", c.want, c.surge), func(t *testing.T) {
			var ws []wview
			for s := range c.want {
				ws = append(ws, wview{pid: 100 + s, slot: s, gen: 1, state: wReady})
			}
			next := 200
			for step := 0; step < 100; step++ {
				p := planPool(pool{workers: ws, target: 2, want: c.want, surge: c.surge, canary: true})
				if len(p.start) == 0 && len(p.stop) == 0 {
					// Settle: starting workers become ready, stopping ones exit.
					changed := false
					var kept []wview
					for _, w := range ws {
						switch w.state {
						case wStopping:
							changed = true
							continue
						case wStarting:
							w.state, changed = wReady, true
						}
						kept = append(kept, w)
					}
					ws = kept
					if !changed {
						break
					}
				}
				for _, pid := range p.stop {
					for i := range ws {
						if ws[i].pid == pid {
							ws[i].state = wStopping
						}
					}
				}
				for _, s := range p.start {
					ws = append(ws, wview{pid: next, slot: s, gen: 2, state: wStarting})
					next++
				}
				ready := 0
				for _, w := range ws {
					if w.state == wReady {
						ready++
					}
				}
				if len(ws) > c.want+c.surge {
					t.Fatalf("step %d: %d processes, over %d+%d", step, len(ws), c.want, c.surge)
				}
				if ready < c.want {
					t.Fatalf("step %d: %d ready, under %d", step, ready, c.want)
				}
			}
			if len(ws) != c.want {
				t.Fatalf("ended with %d workers, want %d: %+v", len(ws), c.want, ws)
			}
			for _, w := range ws {
				if w.gen != 2 || w.state != wReady {
					t.Fatalf("ended with %+v, want only ready generation-2 workers", ws)
				}
			}
		})
	}
}
