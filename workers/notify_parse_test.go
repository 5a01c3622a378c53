package workers

import (
	"bytes"
	"strconv"
	"strings"
	"testing"
)

func TestParseMessage(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    Message
		wantErr bool
	}{
		{name: "ready", in: "READY=1", want: Message{Ready: true}},
		{name: "trailing newline", in: "READY=1\n", want: Message{Ready: true}},
		{name: "blank lines", in: "\nREADY=1\n\nWATCHDOG=1\n\n", want: Message{Ready: true, Watchdog: true}},
		{name: "stopping", in: "STOPPING=1", want: Message{Stopping: true}},
		{name: "watchdog", in: "WATCHDOG=1", want: Message{Watchdog: true}},
		{name: "barrier", in: "BARRIER=1", want: Message{Barrier: true}},
		{name: "ready other value", in: "READY=0", want: Message{}},
		{name: "status with = and spaces", in: "STATUS=up: a=b  c ", want: Message{Status: "up: a=b  c ", HasStatus: true}},
		{name: "empty status", in: "STATUS=", want: Message{HasStatus: true}},
		{name: "status utf8", in: "STATUS=prêt ✓", want: Message{Status: "prêt ✓", HasStatus: true}},
		{name: "last status wins", in: "STATUS=a\nSTATUS=b", want: Message{Status: "b", HasStatus: true}},
		{name: "requests", in: "X_REQUESTS=1234", want: Message{Requests: 1234, HasRequests: true}},
		{name: "requests zero", in: "X_REQUESTS=0", want: Message{HasRequests: true}},
		{name: "requests max", in: "X_REQUESTS=9223372036854775807", want: Message{Requests: 1<<63 - 1, HasRequests: true}},
		{name: "all", in: "READY=1\nSTATUS=hi\nX_REQUESTS=3\nWATCHDOG=1\nSTOPPING=1\nBARRIER=1\n",
			want: Message{Ready: true, Status: "hi", HasStatus: true, Requests: 3, HasRequests: true, Watchdog: true, Stopping: true, Barrier: true}},
		{name: "unknown keys ignored", in: "MAINPID=1\nRELOADING=1\nREADY=1\nERRNO=2", want: Message{Ready: true}},
		{name: "unknown key only", in: "FOO=bar", want: Message{}},
		{name: "max size", in: "STATUS=" + strings.Repeat("x", MaxMessageSize-len("STATUS=")),
			want: Message{Status: strings.Repeat("x", MaxMessageSize-len("STATUS=")), HasStatus: true}},

		{name: "empty", in: "", wantErr: true},
		{name: "only newlines", in: "\n\n", wantErr: true},
		{name: "over max size", in: "STATUS=" + strings.Repeat("x", MaxMessageSize), wantErr: true},
		{name: "invalid utf8", in: "STATUS=\xff\xfe", wantErr: true},
		{name: "nul byte", in: "READY=1\x00", wantErr: true},
		{name: "nul in unknown key", in: "FOO=\x00", wantErr: true},
		{name: "line without =", in: "READY=1\nhello", wantErr: true},
		{name: "unknown line without =", in: "READY", wantErr: true},
		{name: "empty key", in: "=1", wantErr: true},
		{name: "empty key after good line", in: "READY=1\n=x\n", wantErr: true},
		{name: "requests empty", in: "X_REQUESTS=", wantErr: true},
		{name: "requests negative", in: "X_REQUESTS=-1", wantErr: true},
		{name: "requests plus sign", in: "X_REQUESTS=+1", wantErr: true},
		{name: "requests minus zero", in: "X_REQUESTS=-0", wantErr: true},
		{name: "requests space", in: "X_REQUESTS= 1", wantErr: true},
		{name: "requests hex", in: "X_REQUESTS=0x10", wantErr: true},
		{name: "requests underscore", in: "X_REQUESTS=1_000", wantErr: true},
		{name: "requests float", in: "X_REQUESTS=1.5", wantErr: true},
		{name: "requests overflow", in: "X_REQUESTS=9223372036854775808", wantErr: true},
		{name: "requests carriage return", in: "X_REQUESTS=1\r\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseMessage([]byte(tt.in))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseMessage(%q) = %+v, want an error", tt.in, got)
				}
				if got != (Message{}) {
					t.Errorf("ParseMessage(%q) returned %+v with the error, want a zero Message", tt.in, got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseMessage(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("ParseMessage(%q)\n got %+v\nwant %+v", tt.in, got, tt.want)
			}
		})
	}
}

// formatMessage is the inverse of ParseMessage for the facts a Message
// keeps; the extra unknown key keeps the result non-empty.
func formatMessage(m Message) []byte {
	var b bytes.Buffer
	b.WriteString("X_FUZZ=1\n")
	flag := func(set bool, key string) {
		if set {
			b.WriteString(key + "=1\n")
		}
	}
	flag(m.Ready, "READY")
	flag(m.Stopping, "STOPPING")
	flag(m.Watchdog, "WATCHDOG")
	flag(m.Barrier, "BARRIER")
	if m.HasStatus {
		b.WriteString("STATUS=" + m.Status + "\n")
	}
	if m.HasRequests {
		b.WriteString("X_REQUESTS=" + strconv.FormatInt(m.Requests, 10) + "\n")
	}
	return b.Bytes()
}

func FuzzParseMessage(f *testing.F) {
	for _, s := range []string{
		"READY=1", "READY=1\nSTATUS=ok=1 2\nX_REQUESTS=7\n", "WATCHDOG=1\nSTOPPING=1",
		"BARRIER=1\n", "X_REQUESTS=-1", "=", "\n", "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := ParseMessage(in)
		again, err2 := ParseMessage(in)
		if (err == nil) != (err2 == nil) || m != again {
			t.Fatalf("ParseMessage(%q) not deterministic: (%+v, %v) then (%+v, %v)", in, m, err, again, err2)
		}
		if err != nil {
			if m != (Message{}) {
				t.Fatalf("ParseMessage(%q) = %+v with error %v, want a zero Message", in, m, err)
			}
			return
		}
		if len(in) == 0 || len(in) > MaxMessageSize || bytes.IndexByte(in, 0) >= 0 {
			t.Fatalf("ParseMessage(%q) accepted a message it must reject", in)
		}
		if m.HasRequests && m.Requests < 0 {
			t.Fatalf("ParseMessage(%q): negative Requests %d", in, m.Requests)
		}
		if !m.HasStatus && m.Status != "" || !m.HasRequests && m.Requests != 0 {
			t.Fatalf("ParseMessage(%q) = %+v: value without its Has flag", in, m)
		}
		if m.HasStatus && !bytes.Contains(in, []byte("STATUS="+m.Status)) {
			t.Fatalf("ParseMessage(%q): Status %q is not in the input", in, m.Status)
		}
		for key, set := range map[string]bool{"READY=1": m.Ready, "STOPPING=1": m.Stopping, "WATCHDOG=1": m.Watchdog, "BARRIER=1": m.Barrier} {
			if set && !bytes.Contains(in, []byte(key)) {
				t.Fatalf("ParseMessage(%q) = %+v, but %s is not in the input", in, m, key)
			}
		}
		out := formatMessage(m)
		if len(out) > MaxMessageSize {
			return // the canonical form adds lines and can exceed the limit
		}
		back, err := ParseMessage(out)
		if err != nil || back != m {
			t.Fatalf("round trip of %+v via %q = (%+v, %v)", m, out, back, err)
		}
	})
}
