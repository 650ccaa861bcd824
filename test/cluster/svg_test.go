package cluster

import (
	"encoding/xml"
	"strings"
	"testing"
)

func TestSVGIsWellFormed(t *testing.T) {
	svg := SVG("failures <per> second", []Panel{{Title: "a & b", Series: []Series{
		{Label: "node-cache", Color: "#1f77b4", Values: []int{0, 0, 0}},
		{Label: "upstream-style", Color: "#d62728", Values: []int{0, 120, 3, 0}},
	}}})
	d := xml.NewDecoder(strings.NewReader(svg))
	for {
		_, err := d.Token()
		if err != nil {
			if err.Error() == "EOF" {
				break
			}
			t.Fatalf("not well-formed: %v\n%s", err, svg)
		}
	}
	if strings.Count(svg, "<polyline") != 2 {
		t.Fatalf("want one line per series:\n%s", svg)
	}
}
