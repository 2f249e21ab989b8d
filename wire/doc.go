// Package wire is the Courier relay protocol as both sides speak it: the
// JSON frames of ../shared/PROTOCOL.md, peer IDs, subscription keys, message
// IDs and the level-2 authentication check.
//
// It is shared by the relay server and by the sidecar's relay client, and it
// imports nothing else of Courier's, so the two sides cannot drift apart.
package wire
