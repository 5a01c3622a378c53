package supervisor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Layer is one source of settings (a config file, the command line): a
// partial Config. Only the keys in Set are given; the other fields are zero
// and mean "not given here". Keys are config-file keys ("graceful_timeout").
type Layer struct {
	Config Config
	Set    map[string]bool
}

// Apply returns c with every setting given in l replaced by l's value
// (lists are copied, never shared). Keys in Set that name no setting (such
// as "config") are ignored. Layers applied in order give precedence:
// Defaults() < file < flags.
func (l Layer) Apply(c Config) Config {
	for _, s := range settings {
		if l.Set[s.Key] {
			set(s.field(&c), get(s.field(&l.Config)))
		}
	}
	return c
}

// LoadFile reads the YAML config file at path: one mapping of config-file
// keys (see Keys) to values. It is strict, and every error is one line that
// starts with path:LINE:COLUMN: an unknown or repeated key, a value of the
// wrong type, a duration that time.ParseDuration rejects, more than one
// YAML document. Lists (command, bind, env) must be YAML lists: a single
// string is refused rather than split, as no shell ever reads the command.
// A null value is refused (remove the key to get the default). An empty
// file sets nothing. Values are not validated here: apply the layer, then
// call Validate. Relative paths in values are kept as written (they are
// relative to the master's working directory, as on the command line).
func LoadFile(path string) (Layer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Layer{}, fmt.Errorf("--config: %w", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil && err != io.EOF {
		return Layer{}, yamlError(path, b, err)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err != io.EOF {
		if err != nil {
			return Layer{}, yamlError(path, b, err)
		}
		return Layer{}, fmt.Errorf("%s:%d:%d: a second YAML document: put every setting in one mapping", path, extra.Line, extra.Column)
	}
	l := Layer{Set: map[string]bool{}}
	top := resolve(&doc)
	if top.Kind == yaml.DocumentNode && len(top.Content) > 0 {
		top = resolve(top.Content[0])
	}
	switch {
	case top.Kind == 0 || top.Kind == yaml.DocumentNode || isNull(top):
		return l, nil // empty file, or only comments
	case top.Kind != yaml.MappingNode:
		return Layer{}, fmt.Errorf("%s:%d:%d: want a mapping of settings (key: value), got %s", path, top.Line, top.Column, describe(top))
	}
	lines := map[string]int{}
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, v := resolve(top.Content[i]), resolve(top.Content[i+1])
		s, ok := lookup(k.Value)
		if !ok || k.Kind != yaml.ScalarNode {
			return Layer{}, fmt.Errorf("%s:%d:%d: unknown key %q%s: accepted keys are %s", path, k.Line, k.Column, k.Value, suggest(k.Value), strings.Join(Keys(), ", "))
		}
		if first, dup := lines[k.Value]; dup {
			return Layer{}, fmt.Errorf("%s:%d:%d: %s: set twice (first on line %d)", path, k.Line, k.Column, k.Value, first)
		}
		lines[k.Value] = k.Line
		if at, err := decodeValue(s.field(&l.Config), k.Value, v); err != nil {
			return Layer{}, fmt.Errorf("%s:%d:%d: %s: %w", path, at.Line, at.Column, k.Value, err)
		}
		l.Set[k.Value] = true
	}
	return l, nil
}

// decodeValue sets the field p points to (p from a Setting's field) from
// n by the field's type: string, int, time.Duration or []string. On error
// it also returns the node at fault (n, or an item of n).
func decodeValue(p any, key string, n *yaml.Node) (*yaml.Node, error) {
	switch p := p.(type) {
	case *time.Duration:
		if n.Kind != yaml.ScalarNode || isNull(n) {
			return n, fmt.Errorf("want a duration like 30s or 1m30s, got %s", describe(n))
		}
		d, err := time.ParseDuration(n.Value)
		if err != nil {
			return n, fmt.Errorf("bad duration %q: want a duration like 30s or 1m30s", n.Value)
		}
		*p = d
	case *int:
		var i int
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&i) != nil {
			if _, err := strconv.Atoi(n.Value); err == nil && n.ShortTag() == "!!str" {
				return n, fmt.Errorf("want an integer, got the quoted string %q: drop the quotes", n.Value)
			}
			return n, fmt.Errorf("want an integer, got %s", describe(n))
		}
		*p = i
	case *string:
		if n.Kind != yaml.ScalarNode || isNull(n) {
			return n, fmt.Errorf("want a string, got %s", describe(n))
		}
		*p = n.Value
	case *[]string:
		if n.Kind != yaml.SequenceNode {
			return n, listError(key, n)
		}
		list := make([]string, 0, len(n.Content))
		for i, item := range n.Content {
			item = resolve(item)
			if item.Kind != yaml.ScalarNode || isNull(item) {
				return item, fmt.Errorf("item %d: want a string, got %s", i+1, describe(item))
			}
			list = append(list, item.Value)
		}
		*p = list
	default:
		panic(fmt.Sprintf("supervisor: a setting of unsupported type %T", p))
	}
	return nil, nil
}

// listError explains that a list was wanted, showing the list form of a
// single string.
func listError(key string, n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode || isNull(n) || n.Value == "" {
		return fmt.Errorf("want a list of strings, got %s", describe(n))
	}
	words := strings.Fields(n.Value)
	if key != "command" && len(words) > 0 {
		words = []string{n.Value}
	}
	for i, w := range words {
		words[i] = strconv.Quote(w)
	}
	return fmt.Errorf("want a list of strings, got the string %q: write %s: [%s]", n.Value, key, strings.Join(words, ", "))
}

// resolve follows an alias to the node it names.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what n is, for "got ..." in errors.
func describe(n *yaml.Node) string {
	switch {
	case n.Kind == yaml.SequenceNode:
		return "a list"
	case n.Kind == yaml.MappingNode:
		return "a mapping"
	case isNull(n):
		return "nothing (null): remove the key to use the default"
	default:
		return strconv.Quote(n.Value)
	}
}

// yamlError turns a yaml.v3 syntax error ("yaml: line 3: ...") into
// "path:3: bad YAML: ...". A line indented with a tab is named first, as
// the likely cause. yaml.v3 numbers the lines of parser errors (the
// messages in parserErrors) from 0 and omits line 0: those are corrected.
func yamlError(path string, b []byte, err error) error {
	msg, line := strings.TrimPrefix(err.Error(), "yaml: "), 0
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, text, ok := strings.Cut(rest, ": "); ok {
			if n, err := strconv.Atoi(num); err == nil {
				msg, line = text, n
			}
		}
	}
	for i, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimLeft(l, " "), "\t") {
			return fmt.Errorf("%s:%d: bad YAML: %s (a tab: indent YAML with spaces)", path, i+1, msg)
		}
	}
	if parserErrors[msg] {
		line++
	}
	if line == 0 {
		return errors.New(path + ": bad YAML: " + strings.ReplaceAll(msg, "\n", " "))
	}
	if msg == "did not find expected node content" {
		msg += ` (quote a value that starts with a sign such as ':', e.g. bind: [":8080"])`
	}
	return fmt.Errorf("%s:%d: bad YAML: %s", path, line, msg)
}

// parserErrors are the problems yaml.v3's parser (not its scanner) reports.
var parserErrors = map[string]bool{
	"did not find expected node content":     true,
	"did not find expected '-' indicator":    true,
	"did not find expected key":              true,
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected <document start>": true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
	"found duplicate %TAG directive":         true,
}

// suggest returns ` (did you mean "workers"?)` for the known key closest
// to key when it is a likely typo (or '-' written for '_'), else "".
func suggest(key string) string {
	best, bestD := "", 3
	for _, k := range Keys() {
		d := editDistance(k, key)
		if k == strings.ReplaceAll(key, "-", "_") {
			d = 0
		}
		if d < bestD && (d < 2 || len(key) >= 5) {
			best, bestD = k, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
