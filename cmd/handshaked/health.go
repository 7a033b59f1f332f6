package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// defaultHealthAddr is where the container image's instance serves health
// (HANDSHAKED_HEALTH_ADDR in deploy/Dockerfile).
const defaultHealthAddr = "127.0.0.1:7071"

// healthCommand is "handshaked health": one gRPC health check against a
// running instance's -health-addr. It exits 0 when the instance says
// SERVING, 1 otherwise, and 2 on a usage mistake, as a container HEALTHCHECK
// or an exec probe expects.
func healthCommand(args []string, lookupEnv func(string) (string, bool), stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("handshaked health", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := defaultHealthAddr
	if v, ok := lookupEnv(envName("health-addr")); ok && v != "" {
		addr = v
	}
	fs.StringVar(&addr, "addr", addr, "the instance's -health-addr (default $"+envName("health-addr")+", else "+defaultHealthAddr+")")
	timeout := fs.Duration("timeout", 5*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "handshaked health: unexpected arguments: %q\n", fs.Args())
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	state, err := checkHealth(ctx, addr)
	if err != nil {
		fmt.Fprintf(stderr, "handshaked health: %s: %v\n", addr, err)
		return 1
	}
	fmt.Fprintln(stdout, state)
	if state != healthpb.HealthCheckResponse_SERVING {
		return 1
	}
	return 0
}

// checkHealth asks the plain-text health service at addr for the state of
// the whole server.
func checkHealth(ctx context.Context, addr string) (healthpb.HealthCheckResponse_ServingStatus, error) {
	conn, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return 0, err
	}
	return resp.GetStatus(), nil
}
