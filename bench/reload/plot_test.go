package main

import (
	"bytes"
	"image/png"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func msec(n float64) time.Duration { return time.Duration(n * float64(time.Millisecond)) }

// phaseOf is a phase of requests sent at t0 plus sent[i] ms, with latency
// lat[i] ms; those with a non-empty errs[i] failed.
func phaseOf(sent, lat []float64, errs []string) *phase {
	p := &phase{errs: map[string]int{}}
	for i := range sent {
		p.add(&vegeta.Result{Timestamp: t0.Add(msec(sent[i])), Latency: msec(lat[i]), Error: errs[i]})
	}
	return p
}

// synthetic is a run: a steady phase, then two reloads, one that succeeds
// and one that rolls back, with a failed request in between.
func synthetic() (steady, reload *phase, reloads []reloadResult) {
	steady = phaseOf([]float64{0, 500}, []float64{1, 2}, []string{"", ""})
	reload = phaseOf([]float64{2000, 2500, 3000}, []float64{3, 0.5, 4},
		[]string{"", "Get \"http://127.0.0.1:1/\": read tcp 127.0.0.1:5->127.0.0.1:1: read: connection reset by peer", ""})
	reloads = []reloadResult{
		{gen: 2, outcome: "succeeded", at: t0.Add(2200 * time.Millisecond), took: 300 * time.Millisecond, drained: 600 * time.Millisecond},
		{gen: 3, outcome: "rolled back", at: t0.Add(3100 * time.Millisecond), took: 100 * time.Millisecond, drained: 100 * time.Millisecond},
	}
	return steady, reload, reloads
}

func TestNewPanel(t *testing.T) {
	steady, reload, reloads := synthetic()
	got := newPanel("plain", steady, reload, reloads)
	want := panel{
		title:    "plain",
		steady:   []point{{0, 1}, {0.5, 2}},
		reload:   []point{{2, 3}, {3, 4}},
		failed:   []float64{2.5},
		reloads:  []window{{2.2, 2.5, false}, {3.1, 3.2, true}},
		rollouts: []window{{2.2, 2.8, false}, {3.1, 3.2, true}},
		end:      3.2,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("newPanel:\n got %+v\nwant %+v", got, want)
	}

	// The load begins at the first request sent, whichever phase it is in
	// and in whatever order vegeta returned the results.
	late := phaseOf([]float64{1000, -250}, []float64{1, 1}, []string{"", ""})
	got = newPanel("late", late, nil, nil)
	if w := []point{{1.25, 1}, {0, 1}}; !reflect.DeepEqual(got.steady, w) || got.end != 1.251 {
		t.Errorf("newPanel with the earliest request last: steady %v end %v, want %v end 1.251", got.steady, got.end, w)
	}
}

func TestDrawPlotPNG(t *testing.T) {
	steady, reload, reloads := synthetic()
	panels := []panel{newPanel("with a rollback", steady, reload, reloads), newPanel("steady only", steady, nil, nil)}
	var b bytes.Buffer
	if err := drawPlot(&b, "png", panels); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&b)
	if err != nil {
		t.Fatal(err)
	}
	if got := img.Bounds().Size(); got.X != plotWidth || got.Y != 2*panelHeight {
		t.Errorf("image is %v, want %dx%d", got, plotWidth, 2*panelHeight)
	}
}

func TestDrawPlotSVG(t *testing.T) {
	steady, reload, reloads := synthetic()
	var b bytes.Buffer
	if err := drawPlot(&b, "svg", []panel{newPanel("svg", steady, reload, reloads)}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "<svg") {
		t.Errorf("no <svg in %d bytes", b.Len())
	}
}

func TestWritePlotFormat(t *testing.T) {
	steady, _, _ := synthetic()
	dir := t.TempDir()
	if err := writePlot(filepath.Join(dir, "x.gif"), []panel{newPanel("x", steady, nil, nil)}); err == nil {
		t.Error("writePlot to a .gif: no error")
	}
	if err := writePlot(filepath.Join(dir, "x.PNG"), []panel{newPanel("x", steady, nil, nil)}); err != nil {
		t.Errorf("writePlot to a .PNG: %v", err)
	}
}
