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
		if r.URL.RawQuery == "" { // most calls: nothing to parse
			next.ServeHTTP(w, r)
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

// identityBody refuses a request whose body has a content coding, gzip or
// any other: the gateway reads a body as it is, so it would refuse a gzip
// one for what its bytes are as JSON (400, "invalid character"), and act
// on one in a coding whose bytes happen to be JSON. 415 with
// Accept-Encoding is the answer RFC 9110 gives (sections 8.4 and 12.5.3).
func identityBody(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for _, v := range r.Header.Values("Content-Encoding") {
			for c := range strings.SplitSeq(v, ",") {
				if c = strings.TrimSpace(c); c != "" && !strings.EqualFold(c, "identity") {
					w.Header().Set("Accept-Encoding", "identity")
					// At most 64 characters of the caller's header in the answer.
					httpError(w, http.StatusUnsupportedMediaType, codes.InvalidArgument, "Content-Encoding %.64q: request bodies are taken as they are (identity), not compressed", c)
					return
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// sameOrigin keeps web pages of other origins from using the REST API
// through a browser: the browser of someone holding a client certificate
// (in production), or of a developer (development mode authenticates
// nobody). A request with a body must say it is JSON, which no HTML form
// can send and a script can send cross-origin only after a CORS preflight
// that this server never answers; an Origin (sent by browsers on
// cross-origin and POST requests) must be the server's own. In development
// mode the Host must also be a loopback name, or a page could point its
// own name at 127.0.0.1 and read the answers (DNS rebinding), and any
// loopback Origin is the developer's own.
func sameOrigin(development bool, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if development && !loopbackHost(r.Host) {
			httpError(w, http.StatusForbidden, codes.PermissionDenied, "development mode answers only loopback host names, not %q", r.Host)
			return
		}
		if o := r.Header.Get("Origin"); o != "" {
			u, err := url.Parse(o)
			own := err == nil && u.Host != "" && (u.Host == r.Host || development && loopbackHost(u.Host))
			if !own {
				httpError(w, http.StatusForbidden, codes.PermissionDenied, "requests from web pages of other origins are refused")
				return
			}
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if !isJSON(r.Header.Get("Content-Type")) {
				httpError(w, http.StatusUnsupportedMediaType, codes.InvalidArgument, "Content-Type: want application/json")
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// isJSON reports whether a Content-Type is JSON's media type, with or
// without parameters (charset).
func isJSON(contentType string) bool {
	if contentType == "application/json" { // most calls: nothing to parse
		return true
	}
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && mt == "application/json"
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
