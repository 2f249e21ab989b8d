package apiclient

import "time"

// Status is GET /v1/status: the relay connection, queue depths, counts
// per path and the node's endpoint health.
type Status struct {
	Relay  RelayStatus               `json:"relay"`
	Outbox map[string]int            `json:"outbox"` // by state
	Inbox  InboxStatus               `json:"inbox"`
	Paths  map[string]int            `json:"paths"` // delivered INDIRECT, handed off OFFLINE
	Node   map[string]EndpointHealth `json:"node"`  // by endpoint: sign, offline, inbound
	// LastHour is, per path (INDIRECT, OFFLINE), the deliveries of the
	// last hour.
	LastHour map[string]PathHour `json:"last_hour"`
	// Attention lists the messages an operator should look at: failed,
	// refused by the node, waiting longer than a minute.
	Attention []NeedsAttention `json:"attention"`
}

// PathHour is one path's last hour.
type PathHour struct {
	Delivered int     `json:"delivered"`  // delivered (INDIRECT) or handed off (OFFLINE)
	P50Ms     float64 `json:"p50_ms"`     // latency from acceptance, median, ms
	P99Ms     float64 `json:"p99_ms"`     // and 99th percentile
	PerMinute []int   `json:"per_minute"` // oldest first; the last is the current minute so far
}

// NeedsAttention is a message an operator should look at, and why.
type NeedsAttention struct {
	Direction string    `json:"direction"` // outbound, inbound
	ID        string    `json:"id"`
	Recipient string    `json:"recipient,omitempty"`
	State     string    `json:"state"` // failed, queued, sending; refused, pending
	Path      string    `json:"path,omitempty"`
	Attempts  int       `json:"attempts"`
	Since     time.Time `json:"since"`
	UpdatedAt time.Time `json:"updated_at"`
	Reason    string    `json:"reason"`
}

// RelayStatus is the relay connection: connected, connecting,
// disconnected or disabled, since when, why.
type RelayStatus struct {
	State     string    `json:"state"`
	Since     time.Time `json:"since"`
	LastError string    `json:"last_error,omitempty"`
	PeerID    string    `json:"peer_id,omitempty"` // the node's, as authenticated at the relay
	Proxy     string    `json:"proxy,omitempty"`   // relay_proxy without credentials, when set
	Identity  string    `json:"identity"`          // relay_identity: "peer" or "anonymous" (then no PeerID)
}

// InboxStatus counts inbound messages.
type InboxStatus struct {
	Pending   int `json:"pending"`   // not at the node yet
	Delivered int `json:"delivered"` // at the node
	Refused   int `json:"refused"`   // refused by the node (400/422): kept, not retried
	// NotForNode: anonymous mode only: received under the shared
	// subscription key, not opened by the node (another peer's).
	NotForNode int `json:"not_for_node"`
}

// EndpointHealth is how one of the node's endpoints has been answering.
type EndpointHealth struct {
	LastOK              time.Time `json:"last_ok,omitzero"`
	LastError           string    `json:"last_error,omitempty"`
	LastErrorAt         time.Time `json:"last_error_at,omitzero"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
}
