package e2e

import (
	"os"
	"testing"

	"go.klusters.dev/credential-webhook/e2e/harness"
)

// cluster is started once for the package: etcd, kube-apiserver and kube-controller-manager take
// tens of seconds to come up. Tests use their own namespaces (cluster.Namespace) and their own
// webhook replicas (cluster.StartWebhook), and do not run in parallel.
var cluster *harness.Cluster

func TestMain(m *testing.M) { os.Exit(harness.Run(m, harness.Options{}, &cluster)) }
