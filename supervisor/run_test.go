package supervisor

import (
	"fmt"
	"net"
	"os"
	"testing"
	"time"

	"github.com/supervisor-dev/supervisor/internal/testkit"
	"github.com/supervisor-dev/supervisor/workers"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// Datagrams the notify socket drops are logged with their count when the
// next one arrives, and good ones still reach the loop.
func TestReadNotifyLogsDrops(t *testing.T) {
	ns, err := workers.ListenNotify(fmt.Sprintf("@supervisor-test/%d/drops", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.WarnLevel)
	notes, quit, done := make(chan []workers.Notification, 1), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		readNotify(ns, notes, quit, zap.New(core))
	}()
	defer func() {
		close(quit)
		ns.Close()
		testkit.Recv(t, done, 5*time.Second, "readNotify to end")
	}()
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: ns.Addr(), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, d := range []string{"no equals sign", "X_REQUESTS=-1", "READY=1"} {
		if _, err := c.Write([]byte(d)); err != nil {
			t.Fatal(err)
		}
	}
	if b := testkit.Recv(t, notes, 5*time.Second, "the good datagram"); len(b) != 1 || !b[0].Msg.Ready {
		t.Fatalf("got %+v, want READY=1 alone", b)
	}
	drops := logs.FilterMessageSnippet("notify datagrams dropped").All()
	if len(drops) != 1 || drops[0].ContextMap()["dropped"] != uint64(2) {
		t.Fatalf("logged %v, want one line with dropped=2", drops)
	}
}
