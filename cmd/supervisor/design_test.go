package main

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// Every "§N" and "invariant N" that code, tests, testdata and the README
// point at is a section or an invariant of docs/DESIGN.md, so the design
// they refer to is in the repo.
func TestDesignReferencesResolve(t *testing.T) {
	design, err := os.ReadFile("../../docs/DESIGN.md")
	if err != nil {
		t.Fatal(err)
	}
	sections := map[int]bool{}
	for _, m := range regexp.MustCompile(`(?m)^## (\d+)\. `).FindAllStringSubmatch(string(design), -1) {
		n, _ := strconv.Atoi(m[1])
		sections[n] = true
	}
	_, invariantsText, _ := strings.Cut(string(design), "## 1. Invariants")
	invariantsText, _, _ = strings.Cut(invariantsText, "\n## ")
	invariants := len(regexp.MustCompile(`(?m)^\d+\. \*\*`).FindAllString(invariantsText, -1))
	if len(sections) < 8 || invariants < 5 {
		t.Fatalf("docs/DESIGN.md: %d numbered sections and %d invariants found; the parsing no longer matches it", len(sections), invariants)
	}

	section := regexp.MustCompile(`§(\d+)`)
	invariant := regexp.MustCompile(`[Ii]nvariants? (\d+)(?:-(\d+))?`)
	refs := 0
	err = filepath.WalkDir("../..", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && strings.HasPrefix(d.Name(), ".") && path != "../.." {
			return filepath.SkipDir
		}
		if d.IsDir() || path == "../../docs/DESIGN.md" {
			return nil
		}
		switch filepath.Ext(path) {
		case ".go", ".md", ".py", ".js", ".sh", ".service", ".yaml":
		default:
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, line := range strings.Split(string(b), "\n") {
			for _, m := range section.FindAllStringSubmatch(line, -1) {
				refs++
				if n, _ := strconv.Atoi(m[1]); !sections[n] {
					t.Errorf("%s:%d: %s: docs/DESIGN.md has no section %d", path, i+1, m[0], n)
				}
			}
			for _, m := range invariant.FindAllStringSubmatch(line, -1) {
				refs++
				for _, g := range m[1:] {
					if n, err := strconv.Atoi(g); err == nil && (n < 1 || n > invariants) {
						t.Errorf("%s:%d: %s: docs/DESIGN.md has invariants 1-%d", path, i+1, m[0], invariants)
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if refs == 0 {
		t.Error("no reference to the design found: the walk read nothing")
	}
}
