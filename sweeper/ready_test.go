package sweeper

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"go.klusters.dev/credential-webhook/annotations"
)

func TestReadyCache(t *testing.T) {
	now := time.Date(2026, 5, 6, 12, 0, 0, 0, time.UTC)
	c := NewReadyCache(10 * time.Minute)
	c.now = func() time.Time { return now }
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "app-restore-restore", UID: "u1",
		Annotations: map[string]string{annotations.AWSRoleARN: "arn:aws:iam::748392615204:role/kubestash-selfhost-0"}}}
	if c.Ready("demo", "app-restore-restore") {
		t.Fatal("ready before anything was proven")
	}
	c.MarkReady(sa)
	if !c.Ready("demo", "app-restore-restore") || c.Ready("other", "app-restore-restore") {
		t.Fatal("MarkReady did not mark exactly this ServiceAccount")
	}
	c.Observe(sa.DeepCopy()) // unchanged: kept
	if !c.Ready("demo", "app-restore-restore") {
		t.Error("an unchanged ServiceAccount lost its entry")
	}
	for name, mut := range map[string]func(*corev1.ServiceAccount){
		"role changed":     func(s *corev1.ServiceAccount) { s.Annotations[annotations.AWSRoleARN] += "x" },
		"recreated":        func(s *corev1.ServiceAccount) { s.UID = "u2" },
		"marked pending":   func(s *corev1.ServiceAccount) { s.Annotations[annotations.Pending] = "x" },
		"azure id changed": func(s *corev1.ServiceAccount) { s.Annotations[annotations.AzureClientID] = "x" },
	} {
		c.MarkReady(sa)
		changed := sa.DeepCopy()
		mut(changed)
		c.Observe(changed)
		if c.Ready("demo", "app-restore-restore") {
			t.Errorf("%s: still ready", name)
		}
	}
	c.MarkReady(sa)
	c.Forget("demo", "app-restore-restore")
	if c.Ready("demo", "app-restore-restore") {
		t.Error("ready after Forget")
	}
	c.MarkReady(sa)
	now = now.Add(10 * time.Minute)
	if c.Ready("demo", "app-restore-restore") {
		t.Error("ready after its TTL")
	}
	var nilCache *ReadyCache
	if nilCache.Ready("demo", "x") {
		t.Error("nil cache says ready")
	}
}
