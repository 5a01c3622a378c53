package supervisor

import (
	"fmt"
	"strings"
)

// Probe is a parsed canary_probe: how a steered reload's canary is checked
// before it gets any live connection (DESIGN §8).
type Probe struct {
	HTTP bool   // GET Path must answer 200; else the connection must be accepted (tcp)
	Path string // HTTP only: the request path, "/health/ready"
}

// String is the setting as written.
func (p *Probe) String() string {
	if p.HTTP {
		return "http:" + p.Path
	}
	return "tcp"
}

// ParseProbe reads a canary_probe setting: "" (off: nil), "tcp", or
// "http:/PATH". An error is one line naming the setting and the fix.
func ParseProbe(s string) (*Probe, error) {
	switch {
	case s == "":
		return nil, nil
	case s == "tcp":
		return &Probe{}, nil
	}
	path, ok := strings.CutPrefix(s, "http:")
	if !ok || !strings.HasPrefix(path, "/") || !requestTarget(path) {
		return nil, fmt.Errorf("--canary-probe %q: want http:/PATH (an absolute path of printable ASCII, no spaces, e.g. http:/health/ready) or tcp", s)
	}
	return &Probe{HTTP: true, Path: path}, nil
}

// requestTarget reports whether path is only printable ASCII without
// spaces: safe in an HTTP request line.
func requestTarget(path string) bool {
	for i := range len(path) {
		if path[i] <= ' ' || path[i] > '~' {
			return false
		}
	}
	return true
}
