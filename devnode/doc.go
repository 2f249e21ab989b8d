// Package devnode is a stand-in OpenBazaar node for demos and system tests.
//
// It plays the node's side of ../shared/PROTOCOL.md ("What the node
// provides"): the sign endpoint in the shape of openbazaar-go's
// POST /ob/signmessage, an OFFLINE publish endpoint and an inbound endpoint,
// and it records what it is handed so tests can assert on it. It builds and
// opens messages as openbazaar-go does: a pb.Message signed into a
// pb.Envelope with the sender's Ed25519 key, sealed with nacl box to the
// recipient's key converted to X25519, laid out as
// nonce(24) | ephemeral X25519 public key(32) | box.
//
// A Node is used in-process through New and Handler, or as the devnode
// binary (cmd/devnode), which adds a control API for tests on the same
// listener: see Handler for the routes.
package devnode
