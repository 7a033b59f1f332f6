package service

import (
	"encoding/json"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
)

// httpError writes an error in the gateway's JSON form, with the status
// the gateway gives code.
func httpError(w http.ResponseWriter, httpStatus int, code codes.Code, format string, args ...any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpStatus)
	json.NewEncoder(w).Encode(map[string]any{"code": int(code), "message": fmt.Sprintf(format, args...), "details": []any{}})
}

// validUTF8 refuses a path or query that is not UTF-8: proto strings must
// be, and past the gateway such a request fails as the service's fault
// (500) when it is the caller's mistake (400).
func validUTF8(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !utf8.ValidString(r.URL.Path) {
			httpError(w, http.StatusBadRequest, codes.InvalidArgument, "path: not valid UTF-8")
			return
		}
		q, err := url.ParseQuery(r.URL.RawQuery)
		if err != nil {
			httpError(w, http.StatusBadRequest, codes.InvalidArgument, "query: %v", err)
			return
		}
		for k, vs := range q {
			for _, v := range append(vs, k) {
				if !utf8.ValidString(v) {
					httpError(w, http.StatusBadRequest, codes.InvalidArgument, "query: not valid UTF-8")
					return
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// sameOriginLoopback keeps web pages away from a development instance,
// which authenticates nobody: a page the developer visits could otherwise
// make the browser call it (cross-site request forgery), or point its own
// name at 127.0.0.1 and read the answers (DNS rebinding). So the Host must
// be a loopback name, an Origin (sent by browsers on cross-origin and POST
// requests) must be a loopback one too, and a request with a body must say
// it is JSON, which no HTML form can send without a CORS preflight that
// this server never answers.
func sameOriginLoopback(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !loopbackHost(r.Host) {
			httpError(w, http.StatusForbidden, codes.PermissionDenied, "development mode answers only loopback host names, not %q", r.Host)
			return
		}
		if o := r.Header.Get("Origin"); o != "" {
			u, err := url.Parse(o)
			if err != nil || u.Host == "" || !loopbackHost(u.Host) {
				httpError(w, http.StatusForbidden, codes.PermissionDenied, "development mode refuses requests from web pages of other origins")
				return
			}
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
				httpError(w, http.StatusUnsupportedMediaType, codes.InvalidArgument, "Content-Type: want application/json")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// loopbackHost reports whether a host or host:port names this machine.
func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.TrimSuffix(strings.TrimPrefix(host, "["), "]"))
	return ip != nil && ip.IsLoopback()
}
