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
}

// RelayStatus is the relay connection: connected, connecting,
// disconnected or disabled, since when, why.
type RelayStatus struct {
	State     string    `json:"state"`
	Since     time.Time `json:"since"`
	LastError string    `json:"last_error,omitempty"`
	PeerID    string    `json:"peer_id,omitempty"` // the node's, as authenticated at the relay
}

// InboxStatus counts inbound messages.
type InboxStatus struct {
	Pending int `json:"pending"` // not at the node yet
}

// EndpointHealth is how one of the node's endpoints has been answering.
type EndpointHealth struct {
	LastOK              time.Time `json:"last_ok,omitzero"`
	LastError           string    `json:"last_error,omitempty"`
	LastErrorAt         time.Time `json:"last_error_at,omitzero"`
	ConsecutiveFailures int       `json:"consecutive_failures"`
}
