package service

import (
	"embed"
	"io/fs"
	"net/http"

	swaggerui "github.com/handshaked/handshaked/third_party/swagger-ui"
)

// docsPage is the /docs page and its initializer; the Swagger UI assets
// come from third_party/swagger-ui.
//
//go:embed docs/index.html docs/init.js
var docsPage embed.FS

// docsCSP keeps the page to this origin: its scripts and styles (no inline
// ones: the initializer is a file), its images (and the data: icons in
// Swagger UI's CSS), and the calls "Try it out" makes. No other site can
// frame it. TestDocsPage fails on any violation the browser reports.
const docsCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// docsHandler serves the API reference: /docs is Swagger UI over
// /openapi.json, /docs/NAME its assets and licences. Like /openapi.json it
// answers anyone: it shows the API's shape, and every call made from it is
// an ordinary REST call, authenticated and authorized as such.
func docsHandler() http.Handler {
	page, err := fs.Sub(docsPage, "docs")
	if err != nil {
		panic(err) // the embedded directory is fixed at build time
	}
	assets := http.FileServerFS(swaggerui.Files)
	local := http.FileServerFS(page)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /docs", func(w http.ResponseWriter, r *http.Request) {
		r.URL.Path = "/"
		local.ServeHTTP(w, r)
	})
	mux.Handle("GET /docs/{$}", http.RedirectHandler("/docs", http.StatusMovedPermanently))
	mux.Handle("GET /docs/init.js", http.StripPrefix("/docs", local))
	mux.Handle("GET /docs/{file}", http.StripPrefix("/docs", assets))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", docsCSP)
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.Header().Set("Referrer-Policy", "no-referrer")
		mux.ServeHTTP(w, r)
	})
}
