package main

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/supervisor-dev/supervisor/supervisor"
	"gopkg.in/yaml.v3"
)

// The settings table, the flags of every command built by addRunFlags,
// check's output and the README's flag table agree.
func TestSettingsTable(t *testing.T) {
	root := newRoot()
	cmds := []*cobra.Command{root}
	for _, name := range []string{"run", "check", "demo"} {
		c, _, err := root.Find([]string{name})
		if err != nil || c.Name() != name {
			t.Fatalf("no %s command: %v", name, err)
		}
		cmds = append(cmds, c)
	}
	for _, c := range cmds {
		c.InitDefaultHelpFlag()
		byFlag := map[string]supervisor.Setting{}
		for _, s := range supervisor.Settings() {
			if s.Flag() == "" {
				continue
			}
			byFlag[s.Flag()] = s
			if c.Flags().Lookup(s.Flag()) == nil {
				t.Errorf("%s: key %s has no flag --%s", c.CommandPath(), s.Key, s.Flag())
			}
		}
		c.Flags().VisitAll(func(f *pflag.Flag) {
			if f.Name == "config" || f.Name == "help" {
				return
			}
			s, ok := byFlag[f.Name]
			if !ok {
				t.Errorf("%s: flag --%s is no config key: add it to the settings table", c.CommandPath(), f.Name)
				return
			}
			if f.Shorthand != s.Short || f.Usage != s.Usage {
				t.Errorf("%s: flag --%s: shorthand %q, usage %q; want the table's %q, %q", c.CommandPath(), f.Name, f.Shorthand, f.Usage, s.Short, s.Usage)
			}
		})
	}

	var want []string
	for _, s := range supervisor.Settings() {
		want = append(want, s.Key)
	}
	out, code := runToEnd(t, command(t, "check", "-c", configs+"good.yaml"))
	var doc yaml.Node
	if code != 0 || yaml.Unmarshal([]byte(out), &doc) != nil || len(doc.Content) != 1 {
		t.Fatalf("check: exit %d, output is not one YAML document:\n%s", code, out)
	}
	var printed []string
	for i := 0; i < len(doc.Content[0].Content); i += 2 {
		printed = append(printed, doc.Content[0].Content[i].Value)
	}
	if !reflect.DeepEqual(printed, want) {
		t.Errorf("check prints the keys\n %v\nwant the table's, in order\n %v", printed, want)
	}

	table := readmeFlagTable(t)
	root.Flags().VisitAll(func(f *pflag.Flag) {
		if f.Name == "help" {
			return
		}
		flag := "--" + f.Name
		if f.Shorthand != "" {
			flag = "-" + f.Shorthand + ", " + flag
		}
		if !strings.Contains(table, "`"+flag+" ") && !strings.Contains(table, "`"+flag+"`") {
			t.Errorf("README's flag table has no row for `%s`", flag)
		}
	})
}

// readmeFlagTable returns the table rows of the README's "Command line"
// section.
func readmeFlagTable(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## Command line\n")
	if !ok {
		t.Fatal(`README.md has no "## Command line" section`)
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var rows []string
	for _, line := range strings.Split(section, "\n") {
		if strings.HasPrefix(line, "| `-") {
			rows = append(rows, line)
		}
	}
	if len(rows) == 0 {
		t.Fatal("README.md's Command line section has no flag table")
	}
	return strings.Join(rows, "\n")
}
