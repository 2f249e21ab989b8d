// Package sidecar is the courier sidecar's delivery engine and configuration:
// it takes messages from the node over the local API, queues them durably
// (package sidecar/queue), sends them INDIRECT through one relay and falls
// back to the node's native OFFLINE path whenever INDIRECT cannot confirm
// delivery, and hands inbound messages to the node.
//
// The configuration is a TOML file ([LoadConfig], [Config.Validate]) that
// [Watch] reloads while the sidecar runs: deleting relay_url opts out of
// INDIRECT without a restart. config.example.toml at the repository root
// documents every key.
package sidecar
