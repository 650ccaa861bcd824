package cluster

import (
	"fmt"
	"html"
	"math"
	"strings"
)

// Series is a line of a chart: failures per second across a scenario.
type Series struct {
	Label  string
	Color  string
	Values []int
}

// Panel is one scenario's chart.
type Panel struct {
	Title  string
	Series []Series
}

// FailuresPerSecond is the failed queries of a pod load in each second of it.
func (l PodLoad) FailuresPerSecond() []int {
	var out []int
	for _, r := range l.Runs {
		if r.Result == nil {
			continue
		}
		for i, s := range r.Result.PerSecond {
			for len(out) <= i {
				out = append(out, 0)
			}
			out[i] += s.Failed
		}
	}
	return out
}

// SVG draws panels one under the other, each with its series on the same
// axes: seconds across, failed queries per second up.
func SVG(title string, panels []Panel) string {
	const width, panelHeight, left, right, top, bottom = 760, 170, 60, 20, 30, 30
	height := len(panels)*panelHeight + 40
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/><text x="%d" y="20" font-size="14">%s</text>`+"\n", left, html.EscapeString(title))
	for i, p := range panels {
		y0 := 40 + i*panelHeight
		plotW, plotH := width-left-right, panelHeight-top-bottom
		maxY, maxX := 1, 1
		for _, s := range p.Series {
			for _, v := range s.Values {
				maxY = max(maxY, v)
			}
			maxX = max(maxX, len(s.Values)-1)
		}
		top := y0 + top
		fmt.Fprintf(&b, `<text x="%d" y="%d">%s</text>`+"\n", left, top-8, html.EscapeString(p.Title))
		fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>`+"\n", left, top, plotW, plotH)
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%d</text><text x="%d" y="%d" text-anchor="end">0</text>`+"\n",
			left-4, top+4, maxY, left-4, top+plotH+4)
		fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%d s</text>`+"\n", left+plotW, top+plotH+16, maxX)
		for j, s := range p.Series {
			var pts []string
			for x, v := range s.Values {
				px := float64(left) + float64(x)*float64(plotW)/float64(maxX)
				py := float64(top+plotH) - float64(v)*float64(plotH)/float64(maxY)
				pts = append(pts, fmt.Sprintf("%.1f,%.1f", px, math.Round(py*10)/10))
			}
			fmt.Fprintf(&b, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>`+"\n", s.Color, strings.Join(pts, " "))
			fmt.Fprintf(&b, `<text x="%d" y="%d" fill="%s">%s</text>`+"\n", left+10+j*300, top+plotH+16, s.Color, html.EscapeString(s.Label))
		}
	}
	b.WriteString("</svg>\n")
	return b.String()
}
