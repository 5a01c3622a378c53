package deploy

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	line int
	cmd  string // upper case: FROM, RUN, COPY, ...
	args string
}

type stage struct {
	from, name string
	body       []instruction
}

// readDockerfile splits a Dockerfile into its stages.
func readDockerfile(t *testing.T, path string) []stage {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var stages []stage
	lines := strings.Split(string(b), "\n")
	for i := 0; i < len(lines); i++ {
		line, at := strings.TrimSpace(lines[i]), i+1
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		for strings.HasSuffix(line, `\`) && i+1 < len(lines) {
			i++
			line = strings.TrimSuffix(line, `\`) + " " + strings.TrimSpace(lines[i])
		}
		cmd, args, _ := strings.Cut(line, " ")
		in := instruction{line: at, cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			f := strings.Fields(in.args)
			s := stage{from: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if in.cmd == "ARG" {
				continue
			}
			t.Fatalf("%s:%d: %s before the first FROM", path, at, in.cmd)
		}
		stages[len(stages)-1].body = append(stages[len(stages)-1].body, in)
	}
	if len(stages) == 0 {
		t.Fatalf("%s: no FROM", path)
	}
	return stages
}

// execForm is the argument list of an exec-form ENTRYPOINT or CMD.
func execForm(t *testing.T, in instruction) []string {
	t.Helper()
	var argv []string
	if err := json.Unmarshal([]byte(in.args), &argv); err != nil {
		t.Fatalf("line %d: %s %s: want the exec form [\"...\", ...]: the shell form needs a shell, and scratch has none", in.line, in.cmd, in.args)
	}
	return argv
}

// The image: a static build of ./cmd/supervisor, alone in a scratch
// image at the path the pod and the units run, not as root, whose default
// command is a master the supervisor accepts running the example app.
func TestDockerfile(t *testing.T) {
	const path = "Dockerfile"
	stages := readDockerfile(t, path)
	final := stages[len(stages)-1]
	if final.from != "scratch" {
		t.Errorf("%s: the final stage is FROM %s, want scratch (the binary only)", path, final.from)
	}

	// The build: static, of the supervisor command, to a known path.
	goBuild := regexp.MustCompile(`\bgo build\b.*\s-o\s+(\S+).*\s\./cmd/supervisor\b`)
	built := map[string]string{} // stage name (and index) -> the binary it builds
	for i, s := range stages[:len(stages)-1] {
		for _, in := range s.body {
			m := goBuild.FindStringSubmatch(in.args)
			if in.cmd != "RUN" || m == nil {
				continue
			}
			if !strings.Contains(in.args, "CGO_ENABLED=0") {
				t.Errorf("%s:%d: go build without CGO_ENABLED=0: the binary may need libc, which scratch lacks", path, in.line)
			}
			built[strconv.Itoa(i)] = m[1]
			if s.name != "" {
				built[s.name] = m[1]
			}
		}
	}
	if len(built) == 0 {
		t.Fatalf("%s: no stage runs go build -o PATH ./cmd/supervisor", path)
	}
	// The build here is the Dockerfile's: CGO_ENABLED=0, and static.
	supervisorBinary(t)

	var entrypoint, cmd []string
	copied, tmp, user := false, false, ""
	for _, in := range final.body {
		switch in.cmd {
		case "RUN":
			t.Errorf("%s:%d: RUN in the scratch stage: there is nothing to run it with", path, in.line)
		case "COPY":
			f := strings.Fields(in.args)
			from := ""
			for _, a := range f {
				if v, ok := strings.CutPrefix(a, "--from="); ok {
					from = v
				}
			}
			if f[len(f)-1] == installedBinary {
				src := f[len(f)-2]
				if want, ok := built[from]; !ok || src != want {
					t.Errorf("%s:%d: COPY %s from %q: not the binary go build made (%v)", path, in.line, src, from, built)
				}
				copied = true
			}
			tmp = tmp || f[len(f)-1] == "/tmp" || f[len(f)-1] == "/tmp/"
		case "USER":
			user = in.args
		case "ENTRYPOINT":
			entrypoint = execForm(t, in)
		case "CMD":
			cmd = execForm(t, in)
		}
	}
	if !copied {
		t.Errorf("%s: the final stage copies nothing to %s, where the pod and the units run the supervisor", path, installedBinary)
	}
	// The master, not root and without XDG_RUNTIME_DIR, makes its control
	// socket in /tmp/supervisor-UID/ (supervisor.DefaultControlPath).
	if !tmp {
		t.Errorf("%s: the final stage has no /tmp: the master's control socket goes in /tmp/supervisor-UID/, and scratch has no /tmp", path)
	}
	// Numeric, so the kubelet can check runAsNonRoot without /etc/passwd.
	uid, _, _ := strings.Cut(user, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("%s: USER %q: give a numeric user other than root (the image has no /etc/passwd)", path, user)
	}

	argv := slices.Concat(entrypoint, cmd)
	if len(argv) == 0 {
		t.Fatalf("%s: no ENTRYPOINT or CMD", path)
	}
	m := readMaster(t, argv, "")
	if want := []string{installedBinary, "example-app"}; !slices.Equal(m.Config.Command, want) {
		t.Errorf("%s: the default command runs %q under the master, want the built-in example app %q", path, m.Config.Command, want)
	}
}
