package azure

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"

	"go.klusters.dev/credential-webhook/kube"
)

// BindingBatcher is the Binder used by serve. It coalesces concurrent additions to the same
// use-mi-<clientID> binding within one replica: while one read-modify-write is in flight, later
// callers queue, and the next round adds all of them in a single Get+Update. KubeStash creates
// ServiceAccounts in bursts; without batching, 100 concurrent additions to one binding make
// conflicts grow with the square of the count and most reviews run out of their time budget
// (measured: 91-94 of 100 left pending for the sweeper).
type BindingBatcher struct {
	CS kube.Client
	// RoundTimeout bounds one round; it is independent of the callers' deadlines, so a caller
	// that gives up does not fail the others (default 30s).
	RoundTimeout time.Duration

	mu     sync.Mutex
	queues map[string]*bindingQueue
}

type bindingWaiter struct {
	subject rbacv1.Subject
	done    chan error
}

type bindingQueue struct {
	pending []bindingWaiter
	running bool
}

// EnsureBinding adds namespace/name to the binding of clientID and returns when a round that
// included it finished, or when ctx ends.
func (b *BindingBatcher) EnsureBinding(ctx context.Context, clientID, namespace, name string) error {
	rbacName, err := RBACName(clientID)
	if err != nil {
		return err
	}
	if err := validateSA(namespace, name); err != nil {
		return err
	}
	key := strings.ToLower(clientID)
	w := bindingWaiter{subject: rbacv1.Subject{Kind: rbacv1.ServiceAccountKind, Namespace: namespace, Name: name}, done: make(chan error, 1)}
	b.mu.Lock()
	if b.queues == nil {
		b.queues = map[string]*bindingQueue{}
	}
	q := b.queues[key]
	if q == nil {
		q = &bindingQueue{}
		b.queues[key] = q
	}
	q.pending = append(q.pending, w)
	if !q.running {
		q.running = true
		go b.drain(rbacName, key, q)
	}
	b.mu.Unlock()
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("waiting for ClusterRoleBinding %s: %w", rbacName, ctx.Err())
	}
}

func (b *BindingBatcher) drain(rbacName, clientID string, q *bindingQueue) {
	timeout := b.RoundTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	for {
		b.mu.Lock()
		batch := q.pending
		q.pending = nil
		if len(batch) == 0 {
			q.running = false
			b.mu.Unlock()
			return
		}
		b.mu.Unlock()
		subjects := make([]rbacv1.Subject, len(batch))
		for i, w := range batch {
			subjects[i] = w.subject
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		err := ensureSubjects(ctx, b.CS, rbacName, clientID, subjects)
		cancel()
		if err != nil {
			err = fmt.Errorf("adding %d ServiceAccounts to ClusterRoleBinding %s: %w", len(batch), rbacName, err)
		}
		for _, w := range batch {
			w.done <- err
		}
	}
}
