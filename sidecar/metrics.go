package sidecar

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"courier/sidecar/queue"
	"courier/wire"
)

// metrics are the engine's Prometheus series, in a registry of its own so
// that several engines can live in one process (tests do).
type metrics struct {
	reg            *prometheus.Registry
	accepted       prometheus.Counter
	deliveries     *prometheus.CounterVec
	publishResults *prometheus.CounterVec
	fallbacks      *prometheus.CounterVec
	failed         prometheus.Counter
	inbound        prometheus.Counter
	pushed         prometheus.Counter
	pushedDirect   prometheus.Counter
	refused        prometheus.Counter
	notForNode     prometheus.Counter
	relayErrors    *prometheus.CounterVec
	revived        prometheus.Counter
	pruned         *prometheus.CounterVec
	latency        *prometheus.HistogramVec
	relay          *prometheus.GaugeVec
	lastHour       *deliveryStats // the status page's last hour
}

func newMetrics(e *Engine, relayState string) *metrics {
	m := &metrics{
		lastHour: newDeliveryStats(time.Now),
		reg:      prometheus.NewRegistry(),
		accepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "courier_messages_accepted_total", Help: "Outbound messages accepted from the node.",
		}),
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "courier_deliveries_total", Help: "Outbound messages delivered (INDIRECT) or handed off (OFFLINE), by path.",
		}, []string{"path"}),
		publishResults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "courier_publish_results_total", Help: "PublishResults from the relay, by status.",
		}, []string{"status"}),
		fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "courier_fallbacks_total", Help: "Messages sent OFFLINE after INDIRECT could not confirm them, by cause (queued, rejected, timeout, too_large, connection_lost; unconfirmed: published at level 1 in anonymous mode, which gets no result).",
		}, []string{"cause"}),
		failed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "courier_messages_failed_total", Help: "Outbound messages given up on.",
		}),
		inbound: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "courier_inbound_received_total", Help: "Inbound messages taken from the relay (new IDs only).",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "courier_inbound_refused_total", Help: "Inbound messages the node refused for good (400 or 422): kept as refused, not retried.",
		}),
		notForNode: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "courier_inbound_not_for_node_total", Help: "Inbound messages an anonymous subscription received that the node could not open (400 or 422): other peers' messages under the same subscription key, expected in anonymous mode.",
		}),
		relayErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "courier_relay_errors_total", Help: "Error frames the relay sent outside the handshake, by kind (too_large, rate_limited, invalid, over_quota, other); at level 1 (anonymous) a refused publish, which names no message.",
		}, []string{"kind"}),
		revived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "courier_messages_revived_total", Help: "Failed outbound messages queued again by a new POST.",
		}),
		pruned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "courier_pruned_total", Help: "Finished messages deleted after store.retention, by table (outbox, inbox).",
		}, []string{"table"}),
		pushed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "courier_inbound_pushed_total", Help: "Inbound messages the node's inbound endpoint accepted.",
		}),
		pushedDirect: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "courier_inbound_pushed_direct_total", Help: "Of those, the ones pushed while their inbox commit ran (acked to the relay without waiting for it).",
		}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "courier_delivery_latency_seconds",
			Help:    "From acceptance by the sidecar to delivered (INDIRECT) or handed off (OFFLINE), by path.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}, []string{"path"}),
		relay: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "courier_relay_state", Help: "1 for the relay connection's current state, 0 for the others.",
		}, []string{"state"}),
	}
	m.reg.MustRegister(m.accepted, m.deliveries, m.publishResults, m.fallbacks, m.failed,
		m.inbound, m.pushed, m.pushedDirect, m.refused, m.notForNode, m.relayErrors, m.revived, m.pruned, m.latency, m.relay, queueCollector{e},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.relayState(relayState)
	return m
}

func (m *metrics) relayState(state string) {
	for _, s := range []string{RelayDisabled, RelayConnecting, RelayConnected, RelayDisconnected} {
		v := 0.0
		if s == state {
			v = 1
		}
		m.relay.WithLabelValues(s).Set(v)
	}
}

func (m *metrics) delivered(o queue.Outbound) {
	m.deliveries.WithLabelValues(string(o.Path)).Inc()
	m.latency.WithLabelValues(string(o.Path)).Observe(o.UpdatedAt.Sub(o.CreatedAt).Seconds())
	m.lastHour.record(o.Path, o.CreatedAt, o.UpdatedAt)
}

var (
	outboxDesc = prometheus.NewDesc("courier_outbox_messages", "Outbound messages by state and path.", []string{"state", "path"}, nil)
	inboxDesc  = prometheus.NewDesc("courier_inbox_pending_messages", "Inbound messages the node does not have yet.", nil, nil)
	inboxState = prometheus.NewDesc("courier_inbox_messages", "Inbound messages in the store by state (pending, delivered, refused, not_for_node).", []string{"state"}, nil)
)

// queueCollector reports queue depths, counted once per scrape.
type queueCollector struct{ e *Engine }

func (c queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- outboxDesc
	ch <- inboxDesc
	ch <- inboxState
}

func (c queueCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	counts, err := c.e.q.Counts(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(outboxDesc, err)
		return
	}
	for _, s := range queue.States {
		for _, p := range queue.Paths {
			ch <- prometheus.MustNewConstMetric(outboxDesc, prometheus.GaugeValue, float64(counts.Count(s, p)), string(s), string(p))
		}
	}
	ch <- prometheus.MustNewConstMetric(inboxDesc, prometheus.GaugeValue, float64(counts.InboxPending))
	for _, s := range []struct {
		state queue.InboxState
		n     int
	}{{queue.InboxPending, counts.InboxPending}, {queue.InboxDelivered, counts.InboxDelivered}, {queue.InboxRefused, counts.InboxRefused}, {queue.InboxNotForNode, counts.InboxNotForNode}} {
		ch <- prometheus.MustNewConstMetric(inboxState, prometheus.GaugeValue, float64(s.n), string(s.state))
	}
}

// Gatherer exposes the engine's metrics for a /metrics handler.
func (e *Engine) Gatherer() prometheus.Gatherer { return e.m.reg }

// resultLabel is the metric label for a relay's publish status or a
// fallback cause: the names PROTOCOL.md and decide use, and "other" for
// anything else. A relay can answer any string as a status; one series
// per made-up answer would grow the metrics without bound.
func resultLabel(s string) string {
	switch s {
	case wire.StatusDelivered, wire.StatusQueued, wire.StatusOffline, wire.StatusRejected,
		"timeout", "too_large", "connection_lost", causeUnconfirmed, "unknown":
		return s
	}
	return "other"
}
