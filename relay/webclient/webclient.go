// Package webclient is Courier's browser light client: a plain HTML page and
// ES modules with which a person chats with OpenBazaar nodes through a relay.
// It holds an OpenBazaar identity (Ed25519) in the page, signs in at level 2
// of PROTOCOL.md (level 1 where the relay has no level 2), and seals, signs
// and opens chat messages exactly as openbazaar-go does. Nothing is built
// or bundled: the files are embedded as written and the relay serves them
// at /client/ (courier-relay passes FS to relay.Config.Client).
//
// ob.js is the OpenBazaar layer (identities, Envelope/Message/Chat, nacl box
// to the X25519 form of the key); client.js the relay protocol (RelayClient,
// with reconnects); app.js drives the page and exposes window.courier for
// tests and the browser console. The crypto libraries are npm packages
// vendored as published under vendor/ (vendor/update.sh, checked against
// vendor/MANIFEST by TestVendorManifest).
package webclient

import (
	"embed"
	"io/fs"
)

//go:embed index.html client.js ob.js app.js style.css all:vendor
var files embed.FS

// FS returns the client's static files, rooted so that index.html is at the
// top: serve it under a path that ends in a slash (such as /client/) so the
// page's relative links resolve.
func FS() fs.FS { return files }
