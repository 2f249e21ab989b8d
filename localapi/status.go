package localapi

import (
	"context"
	_ "embed"
	"fmt"
	"html/template"
	"net/http"
	"time"

	"courier/sidecar"
	"courier/sidecar/queue"
)

func (s *Server) getStatus(w http.ResponseWriter, r *http.Request) {
	st, err := s.e.Status(r.Context(), 0)
	if err != nil {
		s.log.Error("status", "err", err)
		writeError(w, http.StatusInternalServerError, "reading the status failed: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, st)
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	if err := s.e.Ready(ctx); err != nil {
		writeError(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

//go:embed status.html
var statusHTML string

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"ago": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return time.Since(t).Round(time.Second).String() + " ago"
	},
	"short": func(s string) string {
		if len(s) > 12 {
			return s[:12] + "…"
		}
		return s
	},
	"ms": func(ms float64) string {
		switch {
		case ms == 0:
			return "–"
		case ms < 10:
			return fmt.Sprintf("%.2f ms", ms)
		case ms < 1000:
			return fmt.Sprintf("%.0f ms", ms)
		default:
			return fmt.Sprintf("%.1f s", ms/1000)
		}
	},
	"last": func(s []int) int {
		if len(s) == 0 {
			return 0
		}
		return s[len(s)-1]
	},
	"color": func(p queue.Path) template.CSS { return template.CSS(chartColors[p]) },
}).Parse(statusHTML))

func (s *Server) statusPage(w http.ResponseWriter, r *http.Request) {
	st, err := s.e.Status(r.Context(), 20)
	if err != nil {
		s.log.Error("status page", "err", err)
		http.Error(w, "reading the status failed: "+err.Error(), http.StatusInternalServerError)
		return
	}
	ready := "ready"
	if err := s.e.Ready(r.Context()); err != nil {
		ready = "NOT READY: " + err.Error()
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	now := time.Now()
	if err := statusPage.Execute(w, map[string]any{
		"S": st, "Ready": ready, "Now": now, "Wait": sidecar.AttentionWait,
		"Paths": []queue.Path{queue.PathIndirect, queue.PathOffline},
		"Chart": deliveryChart(st.LastHour, now),
	}); err != nil {
		s.log.Warn("render status page", "err", err)
	}
}
