package localapi_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"courier/localapi"
	"courier/localapi/apiclient"
	"courier/sidecar"
	"courier/sidecar/queue"
	st "courier/sidecar/sidecartest"
)

// The status answers what an operator asks first: latency and deliveries
// per minute per path over the last hour, and the messages that need a
// look (failed, refused by the node) with their reason; the page shows the
// same, with the chart.
func TestStatusAttentionAndLastHour(t *testing.T) {
	r := st.StartRelay(t, nil, nil)
	n := st.NewNode(t, "operator")
	cfg := st.Config(n, r.URL(), t.TempDir())
	cfg.Delivery.OfflineMaxAttempts = 2
	s := st.StartSidecar(t, n, cfg, st.Options())
	hs := httptest.NewServer(localapi.New(s.E, "", st.Logger()))
	t.Cleanup(hs.Close)
	peer := st.NewNode(t, "peer")
	sp := st.StartSidecar(t, peer, st.Config(peer, r.URL(), t.TempDir()), st.Options())
	s.WaitRelay(sidecar.RelayConnected)
	sp.WaitRelay(sidecar.RelayConnected)

	// Delivered INDIRECT: counted in the last hour.
	delivered := s.Submit(peer, st.Ciphertext("to peer", 1, 200))
	s.WaitMessage(delivered, queue.Delivered)
	// Failed: a recipient nobody serves goes OFFLINE, where the node's
	// endpoint keeps failing.
	n.Offline.FailAlways(http.StatusInternalServerError)
	failed := s.Submit(st.NewNode(t, "nobody"), st.Ciphertext("to nobody", 1, 200))
	s.WaitMessage(failed, queue.Failed)
	// Refused: the node answers 422 to an inbound message.
	n.Inbound.FailAlways(http.StatusUnprocessableEntity)
	refused := sp.Submit(n, st.Ciphertext("refused", 1, 200))

	c, _ := apiclient.New(hs.URL, apiclient.Options{})
	var stat apiclient.Status
	st.Eventually(t, "the refused message in the status", func() bool {
		var err error
		if stat, err = c.Status(t.Context()); err != nil {
			t.Fatal(err)
		}
		return stat.Inbox.Refused == 1
	})
	in := stat.LastHour["INDIRECT"]
	if in.Delivered != 1 || in.P50Ms <= 0 || in.P99Ms < in.P50Ms || len(in.PerMinute) != 60 || sum(in.PerMinute) != 1 {
		t.Errorf("last hour INDIRECT = %+v", in)
	}
	if off := stat.LastHour["OFFLINE"]; off.Delivered != 0 || off.P50Ms != 0 {
		t.Errorf("last hour OFFLINE = %+v (the failed message was never handed off)", off)
	}
	byID := map[string]apiclient.NeedsAttention{}
	for _, a := range stat.Attention {
		byID[a.ID] = a
	}
	if a := byID[failed]; a.Direction != "outbound" || a.State != "failed" || a.Path != "OFFLINE" || a.Attempts != 2 ||
		!strings.Contains(a.Reason, "500") || !strings.Contains(a.Reason, "offline") || !strings.Contains(a.Reason, "POST it again") {
		t.Errorf("failed message in attention = %+v", a)
	}
	if a := byID[refused]; a.Direction != "inbound" || a.State != "refused" || !strings.Contains(a.Reason, "refused") || !strings.Contains(a.Reason, "422") || !strings.Contains(a.Reason, "not retried") {
		t.Errorf("refused message in attention = %+v", a)
	}
	if _, ok := byID[delivered]; ok || len(stat.Attention) != 2 {
		t.Errorf("attention = %+v, want only the failed and the refused message", stat.Attention)
	}

	resp, err := http.Get(hs.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	page := st.ReadAll(resp.Body)
	for _, want := range []string{
		"<h2>Needs attention</h2>", failed[:12], refused[:12], "(not retried)", "(POST it again to retry)",
		"<h2>Deliveries, last hour</h2>", "<svg", "1 INDIRECT, 0 OFFLINE", // the bar's hover title
		">INDIRECT</td><td class=\"num\">1</td>",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	if strings.Contains(page, "Nothing: no failed") {
		t.Error("status page says nothing needs attention")
	}
}

func sum(s []int) int {
	n := 0
	for _, v := range s {
		n += v
	}
	return n
}
