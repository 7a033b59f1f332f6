package service

import "context"

type identityKey struct{}

// withIdentity records the authenticated caller of a call.
func withIdentity(ctx context.Context, identity string) context.Context {
	return context.WithValue(ctx, identityKey{}, identity)
}

// callerIdentity is the authenticated caller of a call; "" in development
// mode, where callers are not authenticated.
func callerIdentity(ctx context.Context) string {
	id, _ := ctx.Value(identityKey{}).(string)
	return id
}
