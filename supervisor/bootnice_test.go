package supervisor

import "testing"

// With boot_nice, every worker starts that much nicer and is set back to
// the master's nice value when it is ready, not before, and once more
// reniceAgain later (a thread forked during the first call), then never
// again; where the master may not set it back, workers start at its
// priority.
func TestSimBootNice(t *testing.T) {
	s := buildSim(t, func(c *Config) { c.Workers, c.BootNice = 2, 7 })
	s.m.nice = bootNice{base: 3, ok: true}
	s.m.step()
	starting := s.pids(wStarting, 0)
	for _, pid := range starting {
		if s.nices[pid] != 7 {
			t.Errorf("worker %d started with Nice %d, want 7", pid, s.nices[pid])
		}
	}
	s.ready(starting[0])
	if n, ok := s.reniced[starting[0]]; !ok || n != 3 {
		t.Errorf("ready worker %d reniced to %d (%v), want the master's 3", starting[0], n, ok)
	}
	if _, ok := s.reniced[starting[1]]; ok {
		t.Errorf("worker %d reniced before it was ready", starting[1])
	}
	s.ready(starting[1])
	if len(s.reniced) != 2 {
		t.Errorf("reniced %v, want both workers", s.reniced)
	}
	if s.renices[starting[0]] != 1 {
		t.Errorf("worker %d reniced %d times at ready, want 1", starting[0], s.renices[starting[0]])
	}
	s.tick(reniceAgain)
	s.tick(10 * reniceAgain)
	for _, pid := range starting {
		if s.renices[pid] != 2 || s.reniced[pid] != 3 {
			t.Errorf("worker %d reniced %d times, last to %d; want twice, to 3", pid, s.renices[pid], s.reniced[pid])
		}
	}

	off := buildSim(t, func(c *Config) { c.Workers, c.BootNice = 1, 7 })
	off.m.nice = bootNice{base: 0, ok: false}
	off.m.step()
	pid := off.pids(wStarting, 0)[0]
	off.ready(pid)
	if off.nices[pid] != 0 || len(off.reniced) != 0 {
		t.Errorf("without the right to set workers back: started with Nice %d, reniced %v; want neither", off.nices[pid], off.reniced)
	}
}
