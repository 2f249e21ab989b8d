package relay

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Reasons a client frame or connection is refused, as the
// courier_relay_rejected_frames_total "reason" label spells them.
const (
	rejectMalformed   = "malformed"
	rejectInvalid     = "invalid"
	rejectTooLarge    = "too_large"
	rejectFrameSize   = "frame_too_large"
	rejectRateLimited = "rate_limited"
	rejectOverQuota   = "over_quota"
	rejectAuth        = "auth"
	rejectState       = "out_of_order"
)

// metrics are one Server's Prometheus metrics, in a registry of its own so
// that several servers can live in one process.
type metrics struct {
	reg *prometheus.Registry

	connections     prometheus.Gauge
	connsRefused    *prometheus.CounterVec
	disconnects     *prometheus.CounterVec
	subscriptions   *prometheus.GaugeVec
	stored          prometheus.Counter
	republished     prometheus.Counter
	delivered       *prometheus.CounterVec
	deliveredLive   prometheus.Counter
	deliveredReplay prometheus.Counter
	acked           prometheus.Counter
	replaysDone     prometheus.Counter
	expired         prometheus.Counter
	publishResults  *prometheus.CounterVec
	rejected        *prometheus.CounterVec
	commitSeconds   prometheus.Histogram
	commitBatch     prometheus.Histogram
	handoffs        *prometheus.CounterVec
}

func newMetrics() *metrics {
	const ns = "courier_relay"
	m := &metrics{
		reg: prometheus.NewRegistry(),
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "connections",
			Help: "Open WebSocket connections.",
		}),
		connsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "connections_refused_total",
			Help: "WebSocket upgrades refused, by reason.",
		}, []string{"reason"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "disconnects_total",
			Help: "Connections the server closed, by reason.",
		}, []string{"reason"}),
		subscriptions: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Name: "subscriptions",
			Help: "Subscribed connections, by protocol level.",
		}, []string{"level"}),
		stored: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "messages_stored_total",
			Help: "Messages stored (republishes of a stored ID not counted).",
		}),
		republished: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "messages_republished_total",
			Help: "Publishes of a message ID that was stored already.",
		}),
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "messages_delivered_total",
			Help: "Delivery frames written to subscribers, by source (replay or live).",
		}, []string{"source"}),
		acked: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "messages_acked_total",
			Help: "Acks of stored messages committed.",
		}),
		replaysDone: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "replays_finished_total",
			Help: "Replays after a subscribe that finished and went live (capped anonymous ones included).",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "messages_expired_total",
			Help: "Messages deleted by the TTL sweep.",
		}),
		publishResults: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "publish_results_total",
			Help: "Level-2 publish results, by status.",
		}, []string{"status"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "rejected_frames_total",
			Help: "Client frames refused, by reason.",
		}, []string{"reason"}),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "store_commit_seconds",
			Help:    "Latency of the store's group commits.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		commitBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "store_commit_batch",
			Help:    "Writes per group commit.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12),
		}),
		handoffs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "handoffs_total",
			Help: "OFFLINE bridge hand-offs, by outcome: handed_off (the node answered 2xx), failed_attempt (retried), dropped_acked (the recipient acked first), expired (given up at the message's expiry).",
		}, []string{"outcome"}),
	}
	m.reg.MustRegister(
		m.connections, m.connsRefused, m.disconnects, m.subscriptions,
		m.stored, m.republished, m.delivered, m.acked, m.replaysDone, m.expired,
		m.publishResults, m.rejected, m.commitSeconds, m.commitBatch, m.handoffs,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// Make the labelled series visible at zero.
	for _, l := range []string{"1", "2"} {
		m.subscriptions.WithLabelValues(l)
	}
	for _, s := range []string{"delivered", "queued", "offline", "rejected"} {
		m.publishResults.WithLabelValues(s)
	}
	for _, o := range []string{handoffHandedOff, handoffFailedAttempt, handoffDroppedAcked, handoffExpired} {
		m.handoffs.WithLabelValues(o)
	}
	m.deliveredLive = m.delivered.WithLabelValues("live")
	m.deliveredReplay = m.delivered.WithLabelValues("replay")
	return m
}

// ObserveCommit records one group commit of the store. Wire it to the
// store's commit hook (sqlitestore.Options.OnCommit).
func (s *Server) ObserveCommit(batch int, d time.Duration) {
	s.metrics.commitSeconds.Observe(d.Seconds())
	s.metrics.commitBatch.Observe(float64(batch))
}
