package service

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"unicode"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
)

// apiRoute is one path of the REST API, as the OpenAPI document has it:
// the methods it answers and, per method, the query parameters it reads.
type apiRoute struct {
	pattern *regexp.Regexp
	query   map[string][]string // method: parameter names (JSON names)
}

// apiRoutes reads the routes of the REST API from the OpenAPI document,
// which is generated from the same HTTP rules as the gateway.
func apiRoutes(spec []byte) ([]apiRoute, error) {
	var doc struct {
		Paths map[string]map[string]struct {
			Parameters []struct{ Name, In string } `json:"parameters"`
		} `json:"paths"`
	}
	if err := json.Unmarshal(spec, &doc); err != nil {
		return nil, fmt.Errorf("OpenAPI document: %w", err)
	}
	param := regexp.MustCompile(`\{[^}]+\}`)
	var routes []apiRoute
	for path, ops := range doc.Paths {
		// A path parameter is one segment, as the gateway matches it on
		// the escaped path: %2F does not end it.
		var re strings.Builder
		for i, lit := range param.Split(path, -1) {
			if i > 0 {
				re.WriteString(`[^/]+`)
			}
			re.WriteString(regexp.QuoteMeta(lit))
		}
		r := apiRoute{pattern: regexp.MustCompile("^" + re.String() + "$"), query: map[string][]string{}}
		for method, op := range ops {
			names := []string{}
			for _, p := range op.Parameters {
				if p.In == "query" {
					names = append(names, p.Name)
				}
			}
			r.query[strings.ToUpper(method)] = names
		}
		routes = append(routes, r)
	}
	return routes, nil
}

// methods are the methods of the routes whose pattern path (escaped)
// matches, each with the query parameters it reads.
func methods(routes []apiRoute, path string) map[string][]string {
	out := map[string][]string{}
	for _, rt := range routes {
		if rt.pattern.MatchString(path) {
			for m, names := range rt.query {
				out[m] = append(out[m], names...)
			}
		}
	}
	return out
}

// methodNotAllowed is the gateway's routing error handler: a method the
// path does not have is 405 with the methods it has (RFC 9110 §15.5.6),
// where the gateway says 501, a server error, for the caller's mistake.
// No gRPC code maps to 405; the body says UNIMPLEMENTED, as gRPC does of a
// method a service does not have.
func methodNotAllowed(routes []apiRoute) runtime.RoutingErrorHandlerFunc {
	return func(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, httpStatus int) {
		if httpStatus != http.StatusMethodNotAllowed {
			runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, httpStatus)
			return
		}
		allowed := slices.Sorted(maps.Keys(methods(routes, r.URL.EscapedPath())))
		w.Header().Set("Allow", strings.Join(allowed, ", "))
		httpError(w, http.StatusMethodNotAllowed, codes.Unimplemented, "%s is not a method of this path", r.Method)
	}
}

// knownQuery refuses a query parameter that the route does not read, as
// an unknown JSON field is refused: the gateway ignores it, so a misspelt
// ?verison=2 would be answered for the primary version. Most calls have
// no query and cost nothing here; a path of no route, or a method it does
// not have, goes on to the gateway's 404 or 405.
func knownQuery(routes []apiRoute, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.RawQuery == "" {
			next.ServeHTTP(w, r)
			return
		}
		read, ok := methods(routes, r.URL.EscapedPath())[r.Method]
		if ok {
			for name := range r.URL.Query() {
				if !slices.Contains(read, lowerCamel(name)) {
					httpError(w, http.StatusBadRequest, codes.InvalidArgument, "query parameter %.64q: %s has no such parameter here", name, r.Method)
					return
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// lowerCamel is a field's JSON name from its proto name (page_size:
// pageSize), as protojson derives it; the gateway accepts both.
func lowerCamel(name string) string {
	var b strings.Builder
	upper := false
	for _, c := range name {
		switch {
		case c == '_':
			upper = true
		case upper:
			b.WriteRune(unicode.ToUpper(c))
			upper = false
		default:
			b.WriteRune(c)
		}
	}
	return b.String()
}
