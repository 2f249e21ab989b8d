package localapi

import (
	"fmt"
	"html/template"
	"strings"
	"time"

	"courier/sidecar"
	"courier/sidecar/queue"
)

// Chart geometry, in SVG user units.
const (
	chartW, chartH = 640, 150
	plotL, plotR   = 44, 8  // margins for the y labels, and the right edge
	plotT, plotB   = 22, 22 // top margin for the caption, bottom margin for the x labels
)

// chartColors are the paths' colors on the page.
var chartColors = map[queue.Path]string{queue.PathIndirect: "#2b6cb0", queue.PathOffline: "#dd8a18"}

// deliveryChart draws deliveries per minute over the last hour as stacked
// bars, INDIRECT below OFFLINE: a plain inline SVG built from numbers only,
// so the page needs no script and no build step. now is the current
// minute's time, for the hover titles.
func deliveryChart(h map[queue.Path]sidecar.PathHour, now time.Time) template.HTML {
	in, off := h[queue.PathIndirect].PerMinute, h[queue.PathOffline].PerMinute
	n := max(len(in), len(off))
	at := func(s []int, i int) int {
		if i < len(s) {
			return s[i]
		}
		return 0
	}
	top := 1
	for i := range n {
		top = max(top, at(in, i)+at(off, i))
	}
	top = niceCeil(top)
	plotW, plotH := float64(chartW-plotL-plotR), float64(chartH-plotT-plotB)
	barW := plotW / float64(max(n, 1))
	y := func(v int) float64 { return plotT + plotH - plotH*float64(v)/float64(top) }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg class="chart" role="img" viewBox="0 0 %d %d" width="%d" height="%d" xmlns="http://www.w3.org/2000/svg">`, chartW, chartH, chartW, chartH)
	fmt.Fprintf(&b, `<title>Deliveries per minute, last hour: INDIRECT (blue) and OFFLINE (orange)</title>`)
	fmt.Fprintf(&b, `<text x="%d" y="12" font-size="11" fill="#666">deliveries per minute</text>`, plotL)
	// Grid: 0, half, top.
	for _, v := range []int{0, top / 2, top} {
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>`, plotL, chartW-plotR, y(v), y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end" font-size="11" fill="#666">%d</text>`, plotL-6, y(v)+4, v)
	}
	start := now.Truncate(time.Minute).Add(-time.Duration(n-1) * time.Minute)
	for i := range n {
		vi, vo := at(in, i), at(off, i)
		if vi+vo == 0 {
			continue
		}
		x := plotL + float64(i)*barW
		w := max(barW-1, 1)
		fmt.Fprintf(&b, `<g><title>%s: %d INDIRECT, %d OFFLINE</title>`, start.Add(time.Duration(i)*time.Minute).Format("15:04"), vi, vo)
		if vi > 0 {
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`, x, y(vi), w, y(0)-y(vi), chartColors[queue.PathIndirect])
		}
		if vo > 0 {
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>`, x, y(vi+vo), w, y(vi)-y(vi+vo), chartColors[queue.PathOffline])
		}
		b.WriteString(`</g>`)
	}
	for _, l := range []struct {
		i      int
		text   string
		anchor string
	}{{0, "60 min ago", "start"}, {n / 2, "30 min ago", "middle"}, {n - 1, "now", "end"}} {
		x := plotL + float64(l.i)*barW
		if l.anchor == "end" {
			x += barW
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%d" text-anchor="%s" font-size="11" fill="#666">%s</text>`, x, chartH-6, l.anchor, l.text)
	}
	b.WriteString(`</svg>`)
	return template.HTML(b.String()) // built above from numbers and fixed text only
}

// niceCeil rounds v up to 1, 2 or 5 times a power of ten.
func niceCeil(v int) int {
	p := 1
	for {
		for _, m := range []int{1, 2, 5} {
			if m*p >= v {
				return m * p
			}
		}
		p *= 10
	}
}
