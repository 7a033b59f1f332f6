// Package openapiv2 embeds the OpenAPI document generated from proto/ (this
// file is the only hand-written one under gen/).
package openapiv2

import _ "embed"

// Spec is the OpenAPI v2 document of the REST API.
//
//go:embed handshaked.swagger.json
var Spec []byte
