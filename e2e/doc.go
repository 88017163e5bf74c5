// Package e2e holds end-to-end tests of credential-webhook against real components: etcd,
// kube-apiserver and kube-controller-manager v1.37.2, moto behind the IAM proxy, cert-manager's
// CRDs and the real webhook binary (see package harness). Run with `make e2e`, or
// `cd e2e && go test ./... -count=1 -timeout 30m`.
package e2e
