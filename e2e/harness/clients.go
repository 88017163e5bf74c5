package harness

import (
	"context"
	"fmt"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// ClientAs returns a client acting as user with groups through impersonation by the admin. The
// apiserver authorises every request as that user (RBAC applies, not admin's rights), and the
// webhook sees them in the review's userInfo: e.g. the KubeStash operator,
// "system:serviceaccount:kubestash:kubestash-kubestash-operator" with groups
// "system:serviceaccounts", "system:serviceaccounts:kubestash", "system:authenticated".
func (c *Cluster) ClientAs(user string, groups ...string) (kubernetes.Interface, error) {
	cfg := rest.CopyConfig(c.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: groups}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("client as %s: %w", user, err)
	}
	return cs, nil
}

// ServiceAccountConfig returns a client config authenticating as a ServiceAccount with a real
// TokenRequest token (valid one hour), as a Pod running under it would.
func (c *Cluster) ServiceAccountConfig(ctx context.Context, namespace, name string) (*rest.Config, error) {
	token, err := c.Token(ctx, namespace, name, time.Hour)
	if err != nil {
		return nil, err
	}
	cfg := rest.AnonymousClientConfig(c.Config)
	cfg.BearerToken = token
	cfg.QPS, cfg.Burst = c.Config.QPS, c.Config.Burst
	return cfg, nil
}
