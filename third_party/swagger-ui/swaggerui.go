// Package swaggerui embeds Swagger UI, the browser front end that handshaked
// serves at /docs over its OpenAPI document. The files are swagger-ui-dist
// from npm as fetch.sh pins it (version and tarball integrity), unchanged;
// SHA256SUMS lists what fetch.sh extracted, and the tests check the embedded
// files against it. Swagger UI is Apache-2.0 (LICENSE, NOTICE); the licences
// of the libraries its bundle contains are in swagger-ui-bundle.js.LICENSE.txt.
package swaggerui

import (
	"embed"
	"strings"
)

// Files holds the assets /docs serves, their licences, VERSION and
// SHA256SUMS.
//
//go:embed LICENSE NOTICE VERSION SHA256SUMS swagger-ui-bundle.js swagger-ui-bundle.js.LICENSE.txt swagger-ui.css favicon-32x32.png
var Files embed.FS

// Version is the pinned swagger-ui-dist version.
func Version() string {
	b, err := Files.ReadFile("VERSION")
	if err != nil {
		panic("swaggerui: VERSION is not embedded: " + err.Error()) // a build without it cannot happen: go:embed lists it
	}
	return strings.TrimSpace(string(b))
}
