package localapi

import (
	"encoding/xml"
	"strings"
	"testing"
	"time"

	"courier/sidecar"
	"courier/sidecar/queue"
)

func TestDeliveryChart(t *testing.T) {
	in, off := make([]int, 60), make([]int, 60)
	in[10], off[10] = 5, 3
	in[59] = 12
	off[30] = 1
	now := time.Date(2026, 12, 1, 3, 0, 30, 0, time.UTC)
	svg := string(deliveryChart(map[queue.Path]sidecar.PathHour{
		queue.PathIndirect: {PerMinute: in}, queue.PathOffline: {PerMinute: off},
	}, now))
	if err := xml.Unmarshal([]byte(svg), new(struct{})); err != nil {
		t.Fatalf("not well-formed SVG: %v\n%s", err, svg)
	}
	if n := strings.Count(svg, "<g>"); n != 3 {
		t.Errorf("%d bar groups, want one per minute with deliveries (3)", n)
	}
	// Hover titles name the minute: minute 10 of the window is 50 minutes
	// before now's minute.
	for _, want := range []string{"02:11: 5 INDIRECT, 3 OFFLINE", "02:31: 0 INDIRECT, 1 OFFLINE", "03:00: 12 INDIRECT, 0 OFFLINE", ">20</text>", "60 min ago", "now"} {
		if !strings.Contains(svg, want) {
			t.Errorf("chart lacks %q", want)
		}
	}
	// Empty: a frame, no bars, a top of 1.
	empty := string(deliveryChart(nil, now))
	if strings.Contains(empty, "<rect") || !strings.Contains(empty, ">1</text>") {
		t.Errorf("empty chart: %s", empty)
	}
}

func TestNiceCeil(t *testing.T) {
	for in, want := range map[int]int{0: 1, 1: 1, 2: 2, 3: 5, 6: 10, 11: 20, 4999: 5000, 5001: 10000} {
		if got := niceCeil(in); got != want {
			t.Errorf("niceCeil(%d) = %d, want %d", in, got, want)
		}
	}
}
