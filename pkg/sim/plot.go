package sim

import (
	"fmt"
	"image/color"
	"path/filepath"
	"slices"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// A palette that stays apart in print and for common colour blindness
// (Okabe-Ito).
var palette = []color.RGBA{
	{0, 114, 178, 255},   // blue
	{213, 94, 0, 255},    // vermillion
	{0, 158, 115, 255},   // green
	{204, 121, 167, 255}, // purple
	{230, 159, 0, 255},   // orange
	{86, 180, 233, 255},  // sky
	{0, 0, 0, 255},       // black
	{240, 228, 66, 255},  // yellow
}

// Line is one named series.
type Line struct {
	Name   string
	X, Y   []float64
	Dashed bool
}

// Axes bounds a chart; a zero Max leaves that axis to the data.
type Axes struct {
	XMin, XMax, YMin, YMax float64
}

// PlotLines draws the series on one chart and saves it; the format follows
// the file's extension (.png, .svg, .pdf).
func PlotLines(path, title, xLabel, yLabel string, lines []Line, ax Axes) error {
	if err := CheckPlotPath(path); err != nil {
		return err
	}
	p := plot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font.Size = vg.Points(14)
	p.X.Label.Text = xLabel
	p.Y.Label.Text = yLabel
	p.X.Label.TextStyle.Font.Size = vg.Points(12)
	p.Y.Label.TextStyle.Font.Size = vg.Points(12)
	p.X.Tick.Label.Font.Size = vg.Points(11)
	p.Y.Tick.Label.Font.Size = vg.Points(11)
	p.Legend.TextStyle.Font.Size = vg.Points(11)
	p.Legend.Top = false
	p.Legend.Left = false
	p.Legend.XOffs = -vg.Points(8)
	p.Legend.YOffs = vg.Points(8)
	p.Add(plotter.NewGrid())
	for i, l := range lines {
		pts := make(plotter.XYs, len(l.X))
		for j := range l.X {
			pts[j].X, pts[j].Y = l.X[j], l.Y[j]
		}
		ln, err := plotter.NewLine(pts)
		if err != nil {
			return fmt.Errorf("plotting %s: %w", l.Name, err)
		}
		ln.LineStyle.Width = vg.Points(2)
		ln.LineStyle.Color = palette[i%len(palette)]
		// Every other series dashed, so lines that run together stay apart.
		if i > 0 && i%2 == 0 {
			ln.LineStyle.Dashes = []vg.Length{vg.Points(7), vg.Points(3)}
		}
		if l.Dashed {
			ln.LineStyle.Color = color.RGBA{120, 120, 120, 255}
			ln.LineStyle.Width = vg.Points(1)
			ln.LineStyle.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		}
		p.Add(ln)
		p.Legend.Add(l.Name, ln)
	}
	// Adding lines widens the axes to their data: bound them afterwards.
	p.X.Min, p.Y.Min = ax.XMin, ax.YMin
	if ax.XMax > ax.XMin {
		p.X.Max = ax.XMax
	}
	if ax.YMax > ax.YMin {
		p.Y.Max = ax.YMax
	}
	p.Legend.ThumbnailWidth = vg.Points(24)
	p.Legend.Padding = vg.Points(2)
	return p.Save(9*vg.Inch, 5.5*vg.Inch, path)
}

// PlotFormats are the extensions a chart is drawn to: the formats the
// commands' help and docs/sim.md promise. gonum would also write JPEG, TIFF,
// EPS and LaTeX, but JPEG blurs a chart's thin lines and text, and no other
// is one the help names.
var PlotFormats = []string{"png", "svg", "pdf"}

// CheckPlotPath refuses a path whose extension names no format PlotLines
// draws, so that a command can say so before it runs; the chart's own save
// would leave an empty file behind.
func CheckPlotPath(path string) error {
	ext := filepath.Ext(path)
	if !slices.Contains(PlotFormats, strings.ToLower(strings.TrimPrefix(ext, "."))) {
		// Built from PlotFormats, so the message names what is drawn.
		last := len(PlotFormats) - 1
		use := "." + strings.Join(PlotFormats[:last], ", .") + " or ." + PlotFormats[last]
		return fmt.Errorf("%s: the chart's format follows the file's extension; use %s, e.g. %s", path, use, strings.TrimSuffix(path, ext)+"."+PlotFormats[0])
	}
	return nil
}

// Plot draws the mean allocation ratio against arrivals for each policy of
// the fill, with the ideal (everything that arrives fits) as a dashed line.
// It shows arrivals from 60%: below that every policy places every pod and
// the lines coincide with the ideal.
func (r *FillReport) Plot(path string) error {
	var lines []Line
	n := 0
	for _, name := range r.Policies {
		if s, ok := r.Summary[name]; ok {
			n = max(n, len(s.AllocCurveMean))
		}
	}
	ideal := Line{Name: "ideal", Dashed: true}
	for k := 0; k < n; k++ {
		ideal.X = append(ideal.X, float64(k))
		ideal.Y = append(ideal.Y, min(float64(k), 100))
	}
	lines = append(lines, ideal)
	for _, name := range r.Policies {
		s, ok := r.Summary[name]
		if !ok {
			continue
		}
		l := Line{Name: fmt.Sprintf("%s (%.2f%% unallocated)", s.Label, s.UnallocatedGPUPctMean)}
		for k, v := range s.AllocCurveMean {
			l.X = append(l.X, float64(k))
			l.Y = append(l.Y, v)
		}
		lines = append(lines, l)
	}
	seeds := 0
	for _, s := range r.Summary {
		seeds = max(seeds, s.Runs)
	}
	title := fmt.Sprintf("GPU allocation as pods arrive (fill protocol, mean of %d seeds)", seeds)
	floor := 60.0
	for _, l := range lines[1:] {
		if len(l.Y) > 0 {
			floor = min(floor, l.Y[len(l.Y)-1]-10)
		}
	}
	return PlotLines(path, title, "arrived GPU requests (% of cluster GPU capacity)", "GPU allocation ratio (%)", lines,
		Axes{XMin: 60, XMax: float64(n - 1), YMin: max(0, floor), YMax: 100.5})
}
