package supervisor

import (
	"fmt"
	"slices"
	"testing"
)

// A rollout to fewer workers than run (a reload after TTIN, or a config
// with fewer workers) arrives: the old workers of the dropped slots make
// room for the canary, want stay ready at every step, no start goes over
// want+surge, and it ends with want ready target workers. Found by
// TestChaosSignalStorm: with 3 workers after a TTIN and a HUP back to 2
// (surge 1), the plan started nothing and stopped nothing, for good.
func TestPlanPoolRolloutToFewer(t *testing.T) {
	for _, c := range []struct{ old, want, surge int }{{3, 2, 1}, {4, 2, 1}, {5, 1, 1}, {6, 4, 2}, {8, 2, 3}, {3, 1, 2}} {
		t.Run(fmt.Sprintf("old%d_want%d_surge%d", c.old, c.want, c.surge), func(t *testing.T) {
			var ws []wview
			for s := range c.old {
				ws = append(ws, wview{pid: 100 + s, slot: s, gen: 1, state: wReady})
			}
			next, settled := 200, false
			for step := 0; step < 100 && !settled; step++ {
				p := planPool(pool{workers: ws, target: 2, want: c.want, surge: c.surge, canary: true})
				if len(p.start) == 0 && len(p.stop) == 0 {
					// Nothing to do: starting workers become ready and
					// stopping ones exit, or the rollout has arrived.
					settled = true
					var kept []wview
					for _, w := range ws {
						switch w.state {
						case wStopping:
							settled = false
							continue
						case wStarting:
							w.state, settled = wReady, false
						}
						kept = append(kept, w)
					}
					ws = kept
					continue
				}
				for i := range ws {
					if slices.Contains(p.stop, ws[i].pid) {
						ws[i].state = wStopping
					}
				}
				for _, s := range p.start {
					ws = append(ws, wview{pid: next, slot: s, gen: 2, state: wStarting})
					next++
				}
				if len(p.start) > 0 && len(ws) > c.want+c.surge {
					t.Fatalf("step %d: started a worker, now %d processes, over %d+%d", step, len(ws), c.want, c.surge)
				}
				ready := 0
				for _, w := range ws {
					if w.state == wReady {
						ready++
					}
				}
				if ready < c.want {
					t.Fatalf("step %d: %d ready, under %d: %+v", step, ready, c.want, ws)
				}
			}
			if !settled || len(ws) != c.want {
				t.Fatalf("the rollout did not arrive (settled %v): %+v", settled, ws)
			}
			for _, w := range ws {
				if w.gen != 2 || w.state != wReady || w.slot >= c.want {
					t.Fatalf("ended with %+v, want %d ready generation-2 workers in slots 0..%d", ws, c.want, c.want-1)
				}
			}
		})
	}
}
