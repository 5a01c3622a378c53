package testkit

import "github.com/prometheus/procfs"

// Alive reports whether process pid exists and is not a zombie (state Z in
// /proc/PID/stat): a process that has exited but not been waited for is not
// alive. It is false when /proc cannot be read for pid.
func Alive(pid int) bool {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return false
	}
	st, err := p.Stat()
	return err == nil && st.State != "Z"
}
