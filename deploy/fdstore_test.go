package deploy

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/supervisor-dev/supervisor/listener"
)

// The services keep the master's sockets in systemd's fd store across a
// crash: FileDescriptorStoreMax= above 0, Restart= to start the master
// again, and FDSTORE= in Environment= with the same number, which systemd
// before 254 does not set and without which the master keeps nothing
// there. A service that binds its sockets itself must have the store, or a
// crashed master's port refuses connections until it is back.
func TestSystemdFDStore(t *testing.T) {
	for _, path := range units(t, "*.service") {
		t.Run(filepath.Base(path), func(t *testing.T) {
			u := readUnit(t, path)
			max := 0
			if v, ok := u.value("Service", "FileDescriptorStoreMax"); ok {
				n, err := strconv.Atoi(v)
				if err != nil {
					t.Fatalf("FileDescriptorStoreMax=%s: not a number", v)
				}
				max = n
			}
			env := ""
			for _, a := range u.all("Service", "Environment") {
				for _, kv := range strings.Fields(a.value) {
					if v, ok := strings.CutPrefix(strings.Trim(kv, `"'`), "FDSTORE="); ok {
						env = v
					}
				}
			}
			switch {
			case max > 0 && env != strconv.Itoa(max):
				t.Errorf("FileDescriptorStoreMax=%d with Environment=FDSTORE=%q: give FDSTORE=%d, or systemd before 254 leaves the master without it", max, env, max)
			case max == 0 && env != "":
				t.Errorf("Environment=FDSTORE=%s without FileDescriptorStoreMax=: systemd would ignore every socket the master sends", env)
			}
			if max > 0 {
				if v, _ := u.value("Service", "Restart"); v == "" || v == "no" {
					t.Errorf("FileDescriptorStoreMax=%d with Restart=%q: nothing starts the master again with its sockets", max, v)
				}
			}
			m := servicesMaster(t, u)
			binds := 0
			for _, a := range m.Resolved.Addrs {
				if a.Kind == listener.KindTCP || a.Kind == listener.KindUnix {
					binds++
				}
			}
			if m.Resolved.MetricsAddr != nil {
				binds++
			}
			if binds > max {
				t.Errorf("FileDescriptorStoreMax=%d, but the master binds %d sockets itself (binds %v, metrics %q): room for all of them", max, binds, m.Config.Bind, m.Config.Metrics)
			}
		})
	}
}
