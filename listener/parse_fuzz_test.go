package listener

import (
	"strings"
	"testing"
)

// Every --bind and --metrics value goes through Parse: it must not panic,
// its errors are one line, a value it accepts keeps its text as Raw, and
// parsing a list of it twice agrees with the duplicate rule.
//
//	go test -run '^$' -fuzz FuzzParse -fuzztime 1m ./listener/
func FuzzParse(f *testing.F) {
	for _, s := range []string{"127.0.0.1:8080", "[::1]:0", ":80", "localhost:8080", "unix:/run/app.sock?mode=0660",
		"unix:@abstract", "fd://3", "fd://2", "systemd", "systemd:http", "systemd:", "host:99999", "", "[::1", "unix:rel/path?mode=7777"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := Parse(s)
		if err != nil {
			if strings.ContainsAny(err.Error(), "\n\r") {
				t.Fatalf("Parse(%q): the error is not one line: %q", s, err)
			}
			return
		}
		if a.Raw != s || a.Key() != s || a.Kind < KindTCP || a.Kind > KindSystemd {
			t.Fatalf("Parse(%q) = %+v", s, a)
		}
		twice, err := ParseAll([]string{s, s})
		port0 := a.Kind == KindTCP && strings.HasSuffix(a.Address, ":0")
		switch {
		case port0 && (err != nil || twice[1].Key() == twice[0].Key()):
			t.Fatalf("ParseAll(%q twice) = %+v, %v: want two sockets with their own keys", s, twice, err)
		case !port0 && err == nil:
			t.Fatalf("ParseAll(%q twice) accepted a duplicate", s)
		}
		if _, err := ParseOwn("metrics", s, nil); err != nil && strings.ContainsAny(err.Error(), "\n\r") {
			t.Fatalf("ParseOwn(%q): the error is not one line: %q", s, err)
		}
	})
}
