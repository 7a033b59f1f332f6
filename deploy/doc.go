// Package deploy holds the offline checks of handshaked's deployment files:
// the container image build (deploy/build.sh, deploy/Dockerfile), the
// Kubernetes manifests (deploy/kubernetes, built with kustomize and decoded
// strictly with the Kubernetes API types), the compose file, and the
// monitoring rules and dashboard (deploy/monitoring, every PromQL
// expression parsed and checked against docs/metrics.md).
//
// It is a module of its own, so that the Kubernetes, kustomize, compose and
// Prometheus libraries these checks need stay out of the service's go.mod.
// .ci/run runs its tests: (cd deploy && go test ./...).
package deploy
