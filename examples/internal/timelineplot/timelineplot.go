// Package timelineplot draws failover timelines
// (github.com/unifiedsql/unified/internal/workload.Timeline) with
// gonum.org/v1/plot: one column per timeline, four panels in each (writes
// per second by node, reads per second by node, errors per second, p99
// latency), with the run's events (the kill, the promotion, the rejoin,
// what the driver saw) as vertical lines across every panel. The demo
// (examples/failover -plot) and examples/failoverplot (for
// cmd/failoverbench -timeline) share it.
package timelineplot

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"

	"github.com/unifiedsql/unified/internal/workload"
)

// Formats are the file name extensions Save writes.
var Formats = []string{".svg", ".png", ".pdf"}

// Save draws the timelines side by side into path, in the format its
// extension names (Formats).
func Save(path string, tls ...workload.Timeline) error {
	ext := strings.ToLower(filepath.Ext(path))
	if !isFormat(ext) {
		return fmt.Errorf("timelineplot: %s: want a file name ending in one of %s", path, strings.Join(Formats, ", "))
	}
	if len(tls) == 0 {
		return fmt.Errorf("timelineplot: %s: no timeline to draw", path)
	}
	const rows = 4
	w, h := vg.Length(len(tls))*7*vg.Inch, 8*vg.Inch
	cw, err := draw.NewFormattedCanvas(w, h, ext[1:])
	if err != nil {
		return fmt.Errorf("timelineplot: %w", err)
	}
	plots := make([][]*plot.Plot, rows)
	for r := range plots {
		plots[r] = make([]*plot.Plot, len(tls))
	}
	for c, tl := range tls {
		col, err := panels(tl)
		if err != nil {
			return err
		}
		for r := range rows {
			plots[r][c] = col[r]
		}
	}
	tiles := draw.Tiles{Rows: rows, Cols: len(tls), PadX: vg.Millimeter * 4, PadY: vg.Millimeter * 2,
		PadTop: vg.Millimeter * 2, PadBottom: vg.Millimeter * 2, PadLeft: vg.Millimeter * 2, PadRight: vg.Millimeter * 4}
	canvases := plot.Align(plots, tiles, draw.New(cw))
	for r := range plots {
		for c := range plots[r] {
			plots[r][c].Draw(canvases[r][c])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := cw.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func isFormat(ext string) bool {
	for _, f := range Formats {
		if ext == f {
			return true
		}
	}
	return false
}

// panels are the four plots of one timeline, top to bottom.
func panels(tl workload.Timeline) ([]*plot.Plot, error) {
	end := float64(len(tl.Buckets)) * tl.StepSeconds
	mk := func(title, ylabel string) *plot.Plot {
		p := plot.New()
		p.Title.Text = title
		p.Y.Label.Text = ylabel
		p.X.Min, p.X.Max = 0, end
		p.Y.Min, p.Y.Max = 0, 1 // an axis even when every value is 0
		p.Legend.Top = true
		p.Legend.TextStyle.Font.Size = vg.Points(8)
		p.Add(plotter.NewGrid())
		return p
	}
	title := func(s string) string {
		if tl.Title == "" {
			return s
		}
		return tl.Title + ": " + s
	}
	writes := mk(title(fmt.Sprintf("acknowledged writes per second (per %v)", stepText(tl.StepSeconds))), "writes/s")
	reads := mk("successful reads per second, by the node that answered", "reads/s")
	errs := mk("errors per second", "errors/s")
	lat := mk("p99 latency of the operations that returned in each step", "ms")
	lat.Y.Scale = plot.LogScale{}
	lat.Y.Tick.Marker = plot.LogTicks{Prec: -1}
	lat.Y.Min, lat.Y.Max = 0.1, 1
	lat.X.Label.Text = "seconds"

	// series adds a line; with gaps, a step without a value (0) breaks
	// it, so that a latency line does not bridge an outage in which
	// nothing returned (a lone value is a dot).
	series := func(p *plot.Plot, i int, name string, value func(workload.Bucket) float64, gaps bool) error {
		var segs []plotter.XYs
		var cur plotter.XYs
		for _, b := range tl.Buckets {
			v := value(b)
			if gaps && v <= 0 {
				if len(cur) > 0 {
					segs, cur = append(segs, cur), nil
				}
				continue
			}
			cur = append(cur, plotter.XY{X: b.T + tl.StepSeconds/2, Y: v})
		}
		if len(cur) > 0 {
			segs = append(segs, cur)
		}
		for j, seg := range segs {
			l, err := plotter.NewLine(seg)
			if err != nil {
				return fmt.Errorf("timelineplot: %s: %w", name, err)
			}
			l.Color = plotutil.Color(i)
			l.Width = vg.Points(1.2)
			p.Add(l)
			if len(seg) == 1 {
				dot, err := plotter.NewScatter(seg)
				if err != nil {
					return fmt.Errorf("timelineplot: %s: %w", name, err)
				}
				dot.Color, dot.Shape, dot.Radius = l.Color, draw.CircleGlyph{}, vg.Points(1.5)
				p.Add(dot)
			}
			if j == 0 {
				p.Legend.Add(name, l)
			}
		}
		return nil
	}
	for i, n := range tl.Nodes {
		if err := series(writes, i, n, func(b workload.Bucket) float64 { return at(b.Writes, i) }, false); err != nil {
			return nil, err
		}
		if err := series(reads, i, n, func(b workload.Bucket) float64 { return at(b.Reads, i) }, false); err != nil {
			return nil, err
		}
	}
	for i, s := range []struct {
		name string
		v    func(workload.Bucket) float64
	}{
		{"failed writes (all)", func(b workload.Bucket) float64 { return b.WriteErrors }},
		{"of them ErrCommitUnknown", func(b workload.Bucket) float64 { return b.CommitUnknown }},
		{"failed reads", func(b workload.Bucket) float64 { return b.ReadErrors }},
	} {
		if err := series(errs, i+len(tl.Nodes), s.name, s.v, false); err != nil {
			return nil, err
		}
	}
	if err := series(lat, 0, "writes", func(b workload.Bucket) float64 { return b.WriteP99MS }, true); err != nil {
		return nil, err
	}
	if err := series(lat, 1, "reads", func(b workload.Bucket) float64 { return b.ReadP99MS }, true); err != nil {
		return nil, err
	}
	writes.Add(marks{ms: tl.Marks, labels: true})
	for _, p := range []*plot.Plot{reads, errs, lat} {
		p.Add(marks{ms: tl.Marks})
	}
	return []*plot.Plot{writes, reads, errs, lat}, nil
}

func at(v []float64, i int) float64 {
	if i < len(v) {
		return v[i]
	}
	return 0
}

func stepText(s float64) string {
	if s < 1 {
		return fmt.Sprintf("%.0f ms", s*1000)
	}
	return fmt.Sprintf("%g s", s)
}

// marks draws the events as vertical lines across the data area, with
// their labels (staggered, so events close in time stay readable) when
// labels is set.
type marks struct {
	ms     []workload.Mark
	labels bool
}

// markStyle is the line of a kind of mark: black for what the test did
// (solid: the fault, dashed: the promotion, dotted: the rejoin), gray
// dashes for what the driver saw, so that they do not read as series.
func markStyle(kind string) draw.LineStyle {
	ls := draw.LineStyle{Color: color.Black, Width: vg.Points(1)}
	switch kind {
	case workload.MarkFault:
	case workload.MarkPromoted:
		ls.Dashes = []vg.Length{vg.Points(6), vg.Points(3)}
	case workload.MarkRejoined:
		ls.Dashes = []vg.Length{vg.Points(1), vg.Points(2)}
	default:
		ls.Color = color.Gray{Y: 0x90}
		ls.Dashes = []vg.Length{vg.Points(3), vg.Points(2)}
	}
	return ls
}

func (m marks) Plot(c draw.Canvas, p *plot.Plot) {
	trX, _ := p.Transforms(&c)
	sty := p.Legend.TextStyle
	sty.Font.Size = vg.Points(7)
	line := sty.Height("M") * 1.3
	for i, mk := range m.ms {
		x := trX(mk.T)
		ls := markStyle(mk.Kind)
		c.StrokeLine2(ls, x, c.Min.Y, x, c.Max.Y)
		if m.labels && mk.Label != "" {
			sty.Color = ls.Color
			y := c.Max.Y - line*vg.Length(2+i%6)
			pt := vg.Point{X: x + vg.Points(2), Y: y}
			sty.XAlign = draw.XLeft
			if x > c.Min.X+(c.Max.X-c.Min.X)*3/4 {
				// Near the right edge: the label goes left of its line.
				pt.X, sty.XAlign = x-vg.Points(2), draw.XRight
			}
			c.FillText(sty, pt, fmt.Sprintf("%.2fs %s", mk.T, mk.Label))
		}
	}
}
