package supervisor

import (
	"errors"
	"fmt"
	"math"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/supervisor-dev/supervisor/listener"
)

// Ready modes (DESIGN §3).
const (
	ReadyNotify = "notify" // wait for READY=1
	ReadyListen = "listen" // seen polling or accepting on an inherited socket
	ReadyDelay  = "delay"  // alive for ReadyDelay
	ReadyAuto   = "auto"   // the first of notify or listen
)

// Steering modes (DESIGN §8).
const (
	SteerAuto = "auto" // a socket per generation for every TCP bind that can have one
	SteerOff  = "off"  // one socket per bind, shared by every generation
)

// Config is everything `supervisor run` is told. The zero value is not
// valid: start from Defaults. Each field is one entry of the settings
// table (settings.go): its config-file key, flag, default and help text.
type Config struct {
	Command         []string
	Bind            []string
	Workers         int
	MaxSurge        string // a count ("2") or a percentage of Workers ("25%")
	GracefulTimeout time.Duration
	ShutdownDelay   time.Duration
	StopSignal      string
	Ready           string
	ReadyTimeout    time.Duration
	ReadyDelay      time.Duration
	Env             []string
	// Recycling (0: off): a worker is replaced, replacement first, after
	// MaxRequests+rand[0,MaxRequestsJitter] requests (its X_REQUESTS
	// reports), after MaxLifetime+rand[0,MaxLifetimeJitter], or once its
	// process group's RSS passes MaxMemory ("512MiB").
	MaxRequests       int
	MaxRequestsJitter int
	MaxLifetime       time.Duration
	MaxLifetimeJitter time.Duration
	MaxMemory         string
	// Timeout is the heartbeat (0: off): a ready worker silent (no
	// WATCHDOG=1) for longer is killed and replaced.
	Timeout time.Duration
	// BootNice (0: off) starts each worker this much nicer than the
	// master, until it is ready.
	BootNice int
	// Steer is SteerAuto or SteerOff (DESIGN §8); taken at start.
	Steer string
	// CanaryProbe is "" (off), "tcp" or "http:/PATH": how a steered
	// reload's canary is probed before it gets live connections (probe.go).
	CanaryProbe string
	Chdir       string
	User        string
	Group       string
	PidFile     string
	Control     string // control socket; "": the caller picks one
	Metrics     string // HOST:PORT or unix:/path for /metrics and /health; "": none
	LogLevel    string
	LogFormat   string
}

// Resolved is a validated Config turned into what the master uses.
type Resolved struct {
	Config
	Path        string              // the command's executable, resolved
	Surge       int                 // MaxSurge resolved against Workers: at least 1
	MaxRSS      int64               // MaxMemory in bytes; 0: no limit
	Addrs       []listener.Addr     // parsed Bind
	StopSig     syscall.Signal      // parsed StopSignal
	Credential  *syscall.Credential // nil: run workers as the master's user
	MetricsAddr *listener.Addr      // parsed Metrics; nil: none
	Probe       *Probe              // parsed CanaryProbe; nil: off
}

// Validate checks c and resolves what the master needs. Each error is one
// line naming the setting and the fix.
func (c Config) Validate() (*Resolved, error) {
	r := &Resolved{Config: c}
	if len(c.Command) == 0 || c.Command[0] == "" {
		return nil, errors.New("no command: give the app to run after --, e.g. supervisor run --bind :8080 -- ./app")
	}
	if c.Workers < 1 {
		return nil, fmt.Errorf("--workers %d: must be at least 1", c.Workers)
	}
	var err error
	if r.Surge, err = ResolveSurge(c.MaxSurge, c.Workers); err != nil {
		return nil, err
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"--graceful-timeout", c.GracefulTimeout}, {"--shutdown-delay", c.ShutdownDelay}, {"--ready-timeout", c.ReadyTimeout}, {"--ready-delay", c.ReadyDelay},
		{"--max-lifetime", c.MaxLifetime}, {"--max-lifetime-jitter", c.MaxLifetimeJitter}, {"--timeout", c.Timeout}} {
		if d.v < 0 {
			return nil, fmt.Errorf("%s %s: must not be negative", d.name, d.v)
		}
	}
	if c.ReadyTimeout == 0 {
		return nil, errors.New("--ready-timeout 0s: must be positive, e.g. 60s")
	}
	if c.BootNice < 0 || c.BootNice > 19 {
		return nil, fmt.Errorf("--boot-nice %d: want 0 (off) to 19", c.BootNice)
	}
	if c.MaxRequests < 0 || c.MaxRequestsJitter < 0 {
		return nil, fmt.Errorf("--max-requests %d, --max-requests-jitter %d: must not be negative (0 turns recycling by requests off)", c.MaxRequests, c.MaxRequestsJitter)
	}
	if c.Timeout > 0 && c.Timeout < 10*time.Millisecond {
		return nil, fmt.Errorf("--timeout %s: too short for a heartbeat: use at least 10ms, e.g. 30s", c.Timeout)
	}
	if r.MaxRSS, err = ParseSize(c.MaxMemory); err != nil {
		return nil, err
	}
	switch c.Ready {
	case ReadyAuto, ReadyNotify, ReadyListen, ReadyDelay:
	default:
		return nil, fmt.Errorf("--ready %q: want auto, notify, listen or delay", c.Ready)
	}
	if len(c.Control) > listener.MaxUnixPath {
		return nil, fmt.Errorf("--control %s: too long for a unix socket path (at most %d bytes): pick a shorter path", c.Control, listener.MaxUnixPath)
	}
	sig, err := ParseSignal(c.StopSignal)
	if err != nil {
		return nil, err
	}
	r.StopSig = sig
	if len(c.Bind) == 0 {
		return nil, errors.New("no --bind: give at least one address, e.g. --bind 127.0.0.1:8080")
	}
	if r.Addrs, err = listener.ParseAll(c.Bind); err != nil {
		return nil, err
	}
	if r.Probe, err = ParseProbe(c.CanaryProbe); err != nil {
		return nil, err
	}
	switch c.Steer {
	case SteerAuto:
		for i := range r.Addrs {
			r.Addrs[i].ReusePort = r.Addrs[i].Kind == listener.KindTCP
		}
	case SteerOff:
	default:
		return nil, fmt.Errorf("--steer %q: want auto or off", c.Steer)
	}
	if c.Metrics != "" {
		a, err := listener.ParseOwn("metrics", c.Metrics, r.Addrs)
		if err != nil {
			return nil, err
		}
		r.MetricsAddr = &a
	}
	for _, kv := range c.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return nil, fmt.Errorf("--env %q: want KEY=VALUE", kv)
		}
	}
	if c.Chdir != "" {
		if st, err := os.Stat(c.Chdir); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("--chdir %s: not a directory", c.Chdir)
		}
	}
	if r.Credential, err = credential(c.User, c.Group); err != nil {
		return nil, err
	}
	if r.Path, err = lookCommand(c.Command[0], c.Chdir); err != nil {
		return nil, err
	}
	return r, nil
}

// ResolveSurge turns a max_surge setting into a number of extra workers for
// a pool of workers (>= 1): a count ("2") as is, a percentage ("25%") of
// workers rounded up, as Kubernetes' maxSurge. The result is at least 1;
// "0", "0%", a negative or malformed setting is a one-line error.
func ResolveSurge(spec string, workers int) (int, error) {
	const want = "(a count like 2, or a percentage like 25%)"
	num, pct := strings.CutSuffix(spec, "%")
	n, err := strconv.Atoi(num)
	if err != nil || strings.HasPrefix(num, "+") {
		return 0, fmt.Errorf("--max-surge %q: want a count like 2, or a percentage like 25%%", spec)
	}
	if n < 1 {
		return 0, fmt.Errorf("--max-surge %s: must be at least 1 %s", spec, want)
	}
	if !pct {
		return n, nil
	}
	if n > (math.MaxInt-99)/max(workers, 1) {
		return 0, fmt.Errorf("--max-surge %s: too large %s", spec, want)
	}
	return max((n*workers+99)/100, 1), nil
}

// lookCommand resolves name like execve would from dir: a name with a slash
// is a path (relative to dir), otherwise it is searched in PATH.
func lookCommand(name, dir string) (string, error) {
	if !strings.Contains(name, "/") {
		p, err := exec.LookPath(name)
		if err != nil {
			return "", fmt.Errorf("command %q not found in PATH: install it or give its path", name)
		}
		return filepath.Abs(p)
	}
	p := name
	if !filepath.IsAbs(p) && dir != "" {
		p = filepath.Join(dir, p)
	}
	st, err := os.Stat(p)
	switch {
	case err != nil:
		return "", fmt.Errorf("command %s: no such file", name)
	case st.IsDir():
		return "", fmt.Errorf("command %s: is a directory, not a program", name)
	case st.Mode()&0o111 == 0:
		return "", fmt.Errorf("command %s: not executable: chmod +x it", name)
	}
	return filepath.Abs(p)
}

// credential resolves --user/--group; nil when neither is given.
func credential(userName, groupName string) (*syscall.Credential, error) {
	if userName == "" && groupName == "" {
		return nil, nil
	}
	cred := &syscall.Credential{Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}
	if userName != "" {
		u, err := lookupUser(userName)
		if err != nil {
			return nil, err
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred.Uid, cred.Gid = uint32(uid), uint32(gid)
	}
	if groupName != "" {
		g, err := user.LookupGroup(groupName)
		if err != nil {
			if g, err = user.LookupGroupId(groupName); err != nil {
				return nil, fmt.Errorf("--group %s: no such group", groupName)
			}
		}
		gid, _ := strconv.Atoi(g.Gid)
		cred.Gid = uint32(gid)
	}
	cred.Groups = []uint32{}
	cred.NoSetGroups = false
	if os.Geteuid() != 0 && (cred.Uid != uint32(os.Geteuid()) || cred.Gid != uint32(os.Getegid())) {
		return nil, fmt.Errorf("--user/--group: switching to uid %d gid %d needs root: run the master as root or drop the flags", cred.Uid, cred.Gid)
	}
	return cred, nil
}

func lookupUser(name string) (*user.User, error) {
	u, err := user.Lookup(name)
	if err == nil {
		return u, nil
	}
	if u, err = user.LookupId(name); err == nil {
		return u, nil
	}
	return nil, fmt.Errorf("--user %s: no such user", name)
}

// ParseSignal accepts "TERM", "SIGTERM", "term" or a number.
func ParseSignal(s string) (syscall.Signal, error) {
	name := strings.ToUpper(strings.TrimPrefix(strings.ToUpper(s), "SIG"))
	if n, err := strconv.Atoi(name); err == nil && n > 0 && n < 65 {
		return syscall.Signal(n), nil
	}
	for sig, n := range signalNames {
		if n == name {
			return sig, nil
		}
	}
	return 0, fmt.Errorf("--stop-signal %q: unknown signal: want a name such as TERM, INT, QUIT, HUP, USR1, USR2, WINCH", s)
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP: "HUP", syscall.SIGINT: "INT", syscall.SIGQUIT: "QUIT", syscall.SIGKILL: "KILL",
	syscall.SIGUSR1: "USR1", syscall.SIGUSR2: "USR2", syscall.SIGTERM: "TERM", syscall.SIGWINCH: "WINCH",
	syscall.SIGABRT: "ABRT", syscall.SIGALRM: "ALRM", syscall.SIGCONT: "CONT", syscall.SIGSTOP: "STOP",
	syscall.SIGTSTP: "TSTP", syscall.SIGTTIN: "TTIN", syscall.SIGTTOU: "TTOU", syscall.SIGPWR: "PWR",
}

// ParseSize reads a --max-memory value: bytes, or a number with K, M, G
// (powers of 1024, also written KiB, MiB, GiB, KB, MB, GB). "" is 0 (off).
func ParseSize(s string) (int64, error) {
	if s == "" {
		return 0, nil
	}
	num := strings.TrimRight(s, "KMGiBkmgb")
	unit := strings.ToUpper(strings.TrimSpace(s[len(num):]))
	n, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	mult := map[string]float64{"": 1, "B": 1, "K": 1 << 10, "KB": 1 << 10, "KIB": 1 << 10,
		"M": 1 << 20, "MB": 1 << 20, "MIB": 1 << 20, "G": 1 << 30, "GB": 1 << 30, "GIB": 1 << 30}[unit]
	bad := fmt.Errorf("--max-memory %q: want a size like 512MiB, 2G or 300000000", s)
	if i, ierr := strconv.ParseInt(strings.TrimSpace(num), 10, 64); ierr == nil && mult != 0 {
		// Whole numbers exactly: a float has 53 bits.
		if i <= 0 || i > (1<<62)/int64(mult) {
			return 0, bad
		}
		return i * int64(mult), nil
	}
	if err != nil || mult == 0 || n <= 0 || n*mult > 1<<62 {
		return 0, bad
	}
	return int64(n * mult), nil
}
