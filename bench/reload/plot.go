package main

// The plot: with -plot FILE, the bench draws every scenario run it made as
// one panel of a single image, the panels stacked top to bottom in the order
// the runs were made, each 1200 px wide and 450 px high (vector formats the
// same size at 96 px per inch). FILE's extension picks the format: .png,
// .svg, .jpg or .tif. The PNG is paletted, in its 256 commonest colours. It
// is written once every run has ended, whatever the outcome; a run that
// could not be measured has no panel. In a panel:
//
//   - x is seconds since the run's load began (its steady phase's first
//     request was sent), up to its last answer or the end of its last
//     reload; y each request's latency in ms, on a log scale;
//   - every request that did not fail is a point at the time it was sent,
//     grey in the steady phase, blue in the reload phase;
//   - every failed request (any vegeta error, the app's own resets included)
//     is a red cross at the top edge at the time it was sent, not a point;
//   - each reload is shaded from its SIGHUP to the master's outcome, "reload
//     succeeded" (orange) or "rolled back" (purple), and its rollout, from the
//     SIGHUP until the workers it replaced had exited, in light orange behind;
//   - the legend, right of the panel, names these and counts them; the title
//     says the run, the workers and the rate.
//
// What a panel shows is computed by newPanel, which does no I/O; drawPlot
// only draws it.

import (
	"cmp"
	"fmt"
	"image"
	"image/color"
	imagedraw "image/draw"
	"image/png"
	"io"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"   // and its formats: png, jpg, tif
	_ "gonum.org/v1/plot/vg/vgsvg" // svg
)

// point is one request: x seconds since the load began, y its latency in ms.
type point struct{ x, y float64 }

// window is a span of a run, in seconds since the load began.
type window struct {
	from, to   float64
	rolledBack bool // a reload's window: it rolled back
}

// panel is what one run's panel shows.
type panel struct {
	title             string
	steady, reload    []point   // the requests that did not fail, by phase
	failed            []float64 // when each failed request was sent
	reloads, rollouts []window  // SIGHUP to outcome; SIGHUP to replaced workers gone
	end               float64   // the last answer or the end of the last window
}

// newPanel lays out the requests of the steady and reload phases (either
// may be nil) and the reloads. Call it before quantile, which sorts the
// latencies apart from the times they were sent.
func newPanel(title string, steady, reload *phase, reloads []reloadResult) panel {
	pn := panel{title: title}
	var zero time.Time // the first request sent, or the first SIGHUP
	for _, p := range []*phase{steady, reload} {
		if p != nil {
			for _, at := range p.sent {
				if zero.IsZero() || at.Before(zero) {
					zero = at
				}
			}
		}
	}
	for _, r := range reloads {
		if zero.IsZero() || r.at.Before(zero) {
			zero = r.at
		}
	}
	secs := func(t time.Time) float64 { return float64(t.Sub(zero)) / float64(time.Second) }
	for i, p := range []*phase{steady, reload} {
		if p == nil {
			continue
		}
		for j, at := range p.sent {
			pn.end = max(pn.end, secs(at.Add(p.latencies[j])))
			if p.failed[j] {
				pn.failed = append(pn.failed, secs(at))
				continue
			}
			pt := point{secs(at), float64(p.latencies[j]) / float64(time.Millisecond)}
			if i == 0 {
				pn.steady = append(pn.steady, pt)
			} else {
				pn.reload = append(pn.reload, pt)
			}
		}
	}
	for _, r := range reloads {
		back := r.outcome != "succeeded"
		pn.reloads = append(pn.reloads, window{secs(r.at), secs(r.at.Add(r.took)), back})
		pn.rollouts = append(pn.rollouts, window{secs(r.at), secs(r.at.Add(r.drained)), back})
		pn.end = max(pn.end, secs(r.at.Add(max(r.took, r.drained))))
	}
	return pn
}

// panel is the run's panel; call it before print (see newPanel).
func (res *result) panel() panel {
	conn := "a new connection per request"
	if res.sc.keepalive {
		conn = "keep-alive"
	}
	title := fmt.Sprintf("%s; %d workers, %d req/s, %s", res.sc.title, res.o.workers, res.o.rate, conn)
	return newPanel(title, res.steady, res.reload, res.reloads)
}

// The image's size in pixels, and how a pixel maps to vg's points.
const (
	plotWidth, panelHeight = 1200, 450
	legendWidth            = 310
	dpi                    = 96 // vgimg's default, the one its registered formats use
)

// The plot's text is in Liberation Sans, which gonum's plot embeds.
func init() { plot.DefaultFont = font.Font{Typeface: "Liberation", Variant: "Sans"} }

func px(n float64) vg.Length { return vg.Length(n) * vg.Inch / dpi }

var (
	steadyColor   = color.NRGBA{R: 110, G: 110, B: 110, A: 150}
	reloadColor   = color.NRGBA{R: 31, G: 90, B: 180, A: 150}
	failedColor   = color.NRGBA{R: 215, G: 25, B: 28, A: 255}
	succeedColor  = color.NRGBA{R: 253, G: 174, B: 97, A: 255}
	rollbackColor = color.NRGBA{R: 178, G: 150, B: 210, A: 255}
	rolloutColor  = color.NRGBA{R: 254, G: 230, B: 200, A: 255}
)

// plotFormat is the image format file's extension names, or an error if
// the extension names none drawPlot can write.
func plotFormat(file string) (string, error) {
	format := strings.ToLower(strings.TrimPrefix(filepath.Ext(file), "."))
	if _, err := draw.NewFormattedCanvas(1, 1, format); err != nil {
		return "", fmt.Errorf("-plot %s: want a file ending in .png, .svg, .jpg or .tif", file)
	}
	return format, nil
}

// writePlot draws the panels into file, in the format of its extension.
func writePlot(file string, panels []panel) error {
	format, err := plotFormat(file)
	if err != nil {
		return err
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if err = drawPlot(f, format, panels); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// drawPlot draws the panels, stacked, as an image in format to w.
func drawPlot(w io.Writer, format string, panels []panel) error {
	if len(panels) == 0 {
		return fmt.Errorf("nothing to plot")
	}
	width, height := px(plotWidth), px(float64(panelHeight*len(panels)))
	var cv vg.CanvasSizer
	var write func() error
	if format == "png" { // paletted: 10^4 translucent points make thousands of colours
		img := vgimg.NewWith(vgimg.UseWH(width, height), vgimg.UseDPI(dpi))
		cv, write = img, func() error {
			return (&png.Encoder{CompressionLevel: png.BestCompression}).Encode(w, paletted(img.Image()))
		}
	} else {
		cw, err := draw.NewFormattedCanvas(width, height, format)
		if err != nil {
			return err
		}
		cv, write = cw, func() error { _, err := cw.WriteTo(w); return err }
	}
	dc := draw.New(cv)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())
	tiles := draw.Tiles{Rows: len(panels), Cols: 1,
		PadTop: px(10), PadBottom: px(10), PadLeft: px(10), PadRight: px(10), PadY: px(20)}
	for i, pn := range panels {
		p, l, err := pn.plot()
		if err != nil {
			return err
		}
		c := tiles.At(draw.Crop(dc, 0, -px(legendWidth), 0, 0), 0, i)
		p.Draw(c)
		data := p.DataCanvas(c) // the legend goes right of it, from its top
		lc := dc
		lc.Min = vg.Point{X: dc.Max.X - px(legendWidth-10), Y: data.Min.Y}
		lc.Max = vg.Point{X: dc.Max.X - px(10), Y: data.Max.Y}
		l.Draw(lc)
	}
	return write()
}

// paletted is img in 256 colours, each other colour replaced by the
// nearest: white, black, the plot's own (on white) and img's commonest.
func paletted(img image.Image) *image.Paletted {
	b := img.Bounds()
	n := map[color.RGBA]int{}
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			n[color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)]++
		}
	}
	common := slices.SortedFunc(maps.Keys(n), func(c, d color.RGBA) int {
		return cmp.Or(n[d]-n[c], cmp.Compare(c.R, d.R), cmp.Compare(c.G, d.G), cmp.Compare(c.B, d.B), cmp.Compare(c.A, d.A))
	})
	pal := color.Palette{color.White, color.Black, failedColor, succeedColor, rollbackColor, rolloutColor}
	for _, c := range []color.NRGBA{steadyColor, reloadColor} {
		on := func(v uint8) uint8 { return uint8((int(v)*int(c.A) + 255*(255-int(c.A)) + 127) / 255) }
		pal = append(pal, color.RGBA{R: on(c.R), G: on(c.G), B: on(c.B), A: 255})
	}
	for _, c := range common {
		if len(pal) == 256 {
			break
		}
		if !slices.ContainsFunc(pal, func(p color.Color) bool { return color.RGBAModel.Convert(p) == c }) {
			pal = append(pal, c)
		}
	}
	out := image.NewPaletted(b, pal)
	imagedraw.Draw(out, b, img, b.Min, imagedraw.Src)
	return out
}

// plot is the panel as a gonum plot, with its legend apart.
func (pn panel) plot() (*plot.Plot, plot.Legend, error) {
	p := plot.New()
	p.Title.Text = pn.title
	p.Title.Padding = px(8)
	p.Title.TextStyle.Font.Size = vg.Points(13)
	p.X.Label.Text = "seconds since the load began (each request at the time it was sent)"
	p.Y.Label.Text = "latency, ms"
	p.X.Min, p.X.Max = 0, max(pn.end, 1e-3)
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, pts := range [][]point{pn.steady, pn.reload} {
		for _, pt := range pts {
			lo, hi = min(lo, pt.y), max(hi, pt.y)
		}
	}
	if lo > hi { // no request succeeded
		lo, hi = 1, 1
	}
	p.Y.Min, p.Y.Max = niceDown(max(lo, 1e-3)), niceUp(max(hi, 1e-3)*1.05)
	p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, plot.TickerFunc(logTicks)

	grid := plotter.NewGrid()
	grid.Vertical.Color, grid.Horizontal.Color = color.Gray{Y: 225}, color.Gray{Y: 225}
	rollouts := shading{pn.rollouts, func(window) color.Color { return rolloutColor }}
	reloads := shading{pn.reloads, func(w window) color.Color {
		if w.rolledBack {
			return rollbackColor
		}
		return succeedColor
	}}
	p.Add(rollouts, reloads, grid)
	l := plot.NewLegend()
	l.Top, l.Left = true, true
	l.TextStyle.Font.Size = vg.Points(10)
	l.Padding = px(4)
	for _, s := range []struct {
		name  string
		pts   []point
		color color.Color
	}{{"request, steady phase", pn.steady, steadyColor}, {"request, reload phase", pn.reload, reloadColor}} {
		style := draw.GlyphStyle{Color: s.color, Radius: px(1.3), Shape: draw.CircleGlyph{}}
		if len(s.pts) > 0 {
			sc, err := plotter.NewScatter(xys(s.pts))
			if err != nil {
				return nil, l, err
			}
			sc.GlyphStyle = style
			p.Add(sc)
		}
		thumb := style
		thumb.Radius = px(3)
		l.Add(fmt.Sprintf("%s (%d)", s.name, len(s.pts)), glyph{thumb})
	}
	fails := marks{pn.failed, draw.GlyphStyle{Color: failedColor, Radius: px(5), Shape: boldCross{}}}
	p.Add(fails)
	l.Add(fmt.Sprintf("failed request, at the top (%d)", len(pn.failed)), glyph{fails.style})
	succeeded, back := 0, 0
	for _, w := range pn.reloads {
		if w.rolledBack {
			back++
		} else {
			succeeded++
		}
	}
	l.Add(fmt.Sprintf(`reload: SIGHUP to "reload succeeded" (%d)`, succeeded), swatch(succeedColor))
	if back > 0 {
		l.Add(fmt.Sprintf(`reload: SIGHUP to "rolled back" (%d)`, back), swatch(rollbackColor))
	}
	l.Add("rollout: SIGHUP to replaced workers exited", swatch(rolloutColor))
	return p, l, nil
}

type xys []point

func (s xys) Len() int                { return len(s) }
func (s xys) XY(i int) (x, y float64) { return s[i].x, s[i].y }

// niceDown is the largest 1, 2 or 5 times a power of ten at most v > 0;
// niceUp the smallest at least v.
func niceDown(v float64) float64 {
	e := math.Pow10(int(math.Floor(math.Log10(v))))
	for _, m := range []float64{5, 2, 1} {
		if m*e <= v*(1+1e-9) {
			return m * e
		}
	}
	return e
}

func niceUp(v float64) float64 {
	e := math.Pow10(int(math.Floor(math.Log10(v))))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*e >= v*(1-1e-9) {
			return m * e
		}
	}
	return 10 * e
}

// logTicks marks 1 to 9 times each power of ten in [lo, hi] and labels 1, 2
// and 5 times it.
func logTicks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		for m := 1.0; m < 10; m++ {
			v := m * math.Pow(10, e)
			if v < lo*(1-1e-9) || v > hi*(1+1e-9) {
				continue
			}
			t := plot.Tick{Value: v}
			if m == 1 || m == 2 || m == 5 {
				t.Label = strconv.FormatFloat(v, 'g', 3, 64)
			}
			ticks = append(ticks, t)
		}
	}
	return ticks
}

// shading fills each window the full height of the data area.
type shading struct {
	windows []window
	color   func(window) color.Color
}

func (s shading) Plot(c draw.Canvas, p *plot.Plot) {
	x, _ := p.Transforms(&c)
	for _, w := range s.windows {
		from, to := max(x(w.from), c.Min.X), min(x(w.to), c.Max.X)
		if to < from+px(2) { // a window too short to see is still drawn
			to = from + px(2)
		}
		c.FillPolygon(s.color(w), rect(from, c.Min.Y, to, c.Max.Y))
	}
}

func rect(x0, y0, x1, y1 vg.Length) []vg.Point {
	return []vg.Point{{X: x0, Y: y0}, {X: x1, Y: y0}, {X: x1, Y: y1}, {X: x0, Y: y1}}
}

// swatch is a legend thumbnail filled with one colour.
type swatch color.NRGBA

func (s swatch) Thumbnail(c *draw.Canvas) {
	c.FillPolygon(color.NRGBA(s), rect(c.Min.X, c.Min.Y, c.Max.X, c.Max.Y))
}

// marks draws a glyph at the top of the data area at each x.
type marks struct {
	xs    []float64
	style draw.GlyphStyle
}

func (m marks) Plot(c draw.Canvas, p *plot.Plot) {
	x, _ := p.Transforms(&c)
	for _, v := range m.xs {
		c.DrawGlyph(m.style, vg.Point{X: x(v), Y: c.Max.Y - m.style.Radius - px(2)})
	}
}

// glyph is a legend thumbnail of one glyph.
type glyph struct{ style draw.GlyphStyle }

func (g glyph) Thumbnail(c *draw.Canvas) { c.DrawGlyph(g.style, c.Center()) }

// boldCross is draw.CrossGlyph with a line 2 px wide rather than 0.5 pt.
type boldCross struct{}

func (boldCross) DrawGlyph(c *draw.Canvas, sty draw.GlyphStyle, pt vg.Point) {
	line := draw.LineStyle{Color: sty.Color, Width: px(2)}
	r := sty.Radius * math.Sqrt2 / 2
	c.StrokeLine2(line, pt.X-r, pt.Y-r, pt.X+r, pt.Y+r)
	c.StrokeLine2(line, pt.X-r, pt.Y+r, pt.X+r, pt.Y-r)
}
