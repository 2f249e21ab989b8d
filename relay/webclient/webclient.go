// Package webclient is Courier's browser light client: a plain HTML page and
// ES modules that speak the relay protocol (level 1 of PROTOCOL.md) straight
// from the browser, the way the Zokos web client does. Nothing is built or
// bundled: the files are embedded as written and the relay serves them at
// /client/ (courier-relay passes FS to relay.Config.Client).
//
// client.js holds the protocol logic (base58, multihash, subscription keys,
// message IDs, RelayClient) and exports all of it; app.js drives the page and
// exposes window.courier for tests and the browser console.
package webclient

import (
	"embed"
	"io/fs"
)

//go:embed index.html client.js app.js style.css
var files embed.FS

// FS returns the client's static files, rooted so that index.html is at the
// top: serve it under a path that ends in a slash (such as /client/) so the
// page's relative links resolve.
func FS() fs.FS { return files }
