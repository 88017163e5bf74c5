package sweeper

import (
	"strings"
	"sync"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/hold"
)

// Informer transforms (issue 16). The informer caches hold every ServiceAccount and every
// KubeStash Job of the cluster, and anyone who may edit those can make them large: a cache
// keeps only what this server reads, and drops the rest as objects arrive.
//
// What is read from cached objects, and so kept (grep for every reader before adding a field):
//
//   - ServiceAccount: name, namespace, uid, resourceVersion, deletionTimestamp, creation time;
//     annotations under our prefix (pending, granted), the inputs (seed role, bucket names,
//     Azure identity), the restic opt-in, and the outputs and EKS settings (role ARN,
//     audience, token expiration, STS regional endpoints, Azure client and tenant IDs):
//     hold.IdentityOf, pods (inject.go, sidecar.go), sweeper (ready.go, finishplan.go, finish.go,
//     writer.go, informers.go, jobloop.go, gc.go, gauges.go), sweeper/awscheck, providers (Cloud.Claim, Cloud.Finish, Collector),
//     markers.Keeps. No ServiceAccount label is read.
//   - Job (cached as a cachedJob, below): name, namespace, uid, resourceVersion, creation time,
//     deletionTimestamp; labels app.kubernetes.io/managed-by (hold.IsHeld) and
//     kueue.x-k8s.io/queue-name (hold.ManagedElsewhere); annotations held-since and hold-reason
//     (hold.IsHeld, hold.HeldSince, hold.ReleasePatch, the Held Event); spec.suspend,
//     spec.managedBy; the pod template's serviceAccountName and deprecated serviceAccount
//     (hold.ServiceAccountName).
//
// A map that existed keeps existing (possibly empty): the patch builders add a whole map when
// it is absent, which on a map that in fact exists would replace it.

// serviceAccountAnnotations are the annotation keys, besides our prefix, read from cached
// ServiceAccounts.
var serviceAccountAnnotations = map[string]bool{
	annotations.SeedRole:                true,
	annotations.BucketNames:             true,
	annotations.AzureMIName:             true,
	annotations.AzureRGName:             true,
	annotations.AzureSubscriptionID:     true,
	annotations.AWSRoleARN:              true,
	annotations.AWSAudience:             true,
	annotations.AWSTokenExpiration:      true,
	annotations.AWSSTSRegionalEndpoints: true,
	annotations.AWSSkipContainers:       true,
	annotations.ResticCredentials:       true, // pods (sidecar.go); no longer under our prefix
	annotations.AzureClientID:           true,
	annotations.AzureTenantID:           true,
}

// jobLabels and jobAnnotations are the keys read from cached Jobs.
var (
	jobLabels      = map[string]bool{annotations.ManagedByLabel: true, hold.KueueQueueLabel: true}
	jobAnnotations = map[string]bool{annotations.HeldSince: true, annotations.HoldReason: true}
)

// filterMap returns the entries of m whose key keep accepts; nil only when m is nil. Keys are
// interned, and values too when shared accepts the key.
func filterMap(in *interner, m map[string]string, keep, shared func(string) bool) map[string]string {
	if m == nil {
		return nil
	}
	n := 0
	for k := range m {
		if keep(k) {
			n++
		}
	}
	out := make(map[string]string, n) // sized for what is kept: an empty map costs its header only
	for k, v := range m {
		if keep(k) {
			if shared(k) {
				v = in.intern(v)
			}
			out[in.intern(k)] = v
		}
	}
	return out
}

// Stripper holds the informers' transforms (ServiceAccount, Job) and the strings they share.
// Each decoded object holds its own copy of its namespace, of every annotation and label key,
// and of values many objects share (the seed role, a derived role's ARN, a bucket list): with
// 10,000 ServiceAccounts about 1 MiB of the heap, and twice that in the GC's goal (issue 18).
// One Stripper serves every informer of a process, so that they share one copy.
type Stripper struct{ strings *interner }

// NewStripper returns a Stripper with an empty string table.
func NewStripper() *Stripper { return &Stripper{strings: newInterner(4096)} }

// interner maps a string to one shared copy of it. It holds at most max strings and forgets
// them all when full, so values that are all different (or made so on purpose) cost a bounded
// map and no more: an object keeps the copy it was given either way.
type interner struct {
	mu  sync.Mutex
	max int
	m   map[string]string
}

func newInterner(max int) *interner { return &interner{max: max, m: map[string]string{}} }

func (in *interner) intern(s string) string {
	if s == "" {
		return ""
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if c, ok := in.m[s]; ok {
		return c
	}
	if len(in.m) >= in.max {
		clear(in.m)
	}
	// A copy: s may share the memory of a larger decoded buffer, which the map would pin.
	c := strings.Clone(s)
	in.m[c] = c
	return c
}

// sharedServiceAccountValue says whether the value of a kept ServiceAccount annotation is worth
// interning: all but the granted marker, which names the ServiceAccount's own UID.
func sharedServiceAccountValue(k string) bool { return k != annotations.Granted }

func always(string) bool { return true }
func never(string) bool  { return false }

func keepServiceAccountAnnotation(k string) bool {
	return serviceAccountAnnotations[k] || strings.HasPrefix(k, annotations.Prefix)
}

// ServiceAccount is the transform of every ServiceAccount informer: the metadata this server
// reads and nothing else (no labels, managed fields, secrets, owner references).
func (st *Stripper) ServiceAccount(obj any) (any, error) {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return stripManagedFields(obj) // cache.DeletedFinalStateUnknown and the like pass through
	}
	return &corev1.ServiceAccount{
		TypeMeta: sa.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: sa.Name, Namespace: st.strings.intern(sa.Namespace), UID: sa.UID, ResourceVersion: sa.ResourceVersion,
			CreationTimestamp: sa.CreationTimestamp, DeletionTimestamp: sa.DeletionTimestamp,
			Annotations: filterMap(st.strings, sa.Annotations, keepServiceAccountAnnotation, sharedServiceAccountValue),
		},
	}, nil
}

// Job is the transform of the sweeper's Job informer (see the list above): a cached
// KubeStash Job is otherwise mostly its pod template and whatever a tenant annotated it with.
// The cache holds a *cachedJob, not a *batchv1.Job.
func (st *Stripper) Job(obj any) (any, error) {
	job, ok := obj.(*batchv1.Job)
	if !ok {
		return stripManagedFields(obj)
	}
	return &cachedJob{
		ObjectMeta: metav1.ObjectMeta{
			Name: job.Name, Namespace: st.strings.intern(job.Namespace), UID: job.UID, ResourceVersion: job.ResourceVersion,
			CreationTimestamp: job.CreationTimestamp, DeletionTimestamp: job.DeletionTimestamp,
			Labels:      sharedMap(filterMap(st.strings, job.Labels, func(k string) bool { return jobLabels[k] }, always)),
			Annotations: sharedMap(filterMap(st.strings, job.Annotations, func(k string) bool { return jobAnnotations[k] }, never)), // times and reasons of their own
		},
		suspend:                  job.Spec.Suspend,
		managedBy:                job.Spec.ManagedBy, // hold.ManagedElsewhere reads it
		serviceAccountName:       job.Spec.Template.Spec.ServiceAccountName,
		deprecatedServiceAccount: job.Spec.Template.Spec.DeprecatedServiceAccount,
	}, nil
}

// The kept labels of nearly every cached Job (the informer lists KubeStash's), and the kept
// annotations of every Job not held: one map for all of them instead of one each, 0.3 KiB a Job.
// Read only, as everything a cache hands out.
var (
	kubeStashJobLabels = map[string]string{annotations.ManagedByLabel: annotations.ManagedByValue}
	noKeptEntries      = map[string]string{}
)

// sharedMap returns the shared map equal to m, if there is one, else m.
func sharedMap(m map[string]string) map[string]string {
	switch {
	case m == nil:
		return nil
	case len(m) == 0:
		return noKeptEntries
	case len(m) == 1 && m[annotations.ManagedByLabel] == annotations.ManagedByValue:
		return kubeStashJobLabels
	}
	return m
}

// cachedJob is what the sweeper's Job cache holds of a KubeStash Job: the fields listed above.
// Not a batchv1.Job, which takes 1.3 KiB however little of it is set (the pod template is
// inline), for each of the cluster's KubeStash Jobs (issue 18): this is a fifth of that.
type cachedJob struct {
	metav1.ObjectMeta
	suspend                                      *bool
	managedBy                                    *string
	serviceAccountName, deprecatedServiceAccount string
}

// view is the Job the hold package reads. It shares the cached maps and pointers: read only, as
// every object a cache hands out.
func (c *cachedJob) view() batchv1.Job {
	j := batchv1.Job{ObjectMeta: c.ObjectMeta}
	j.Spec.Suspend, j.Spec.ManagedBy = c.suspend, c.managedBy
	j.Spec.Template.Spec.ServiceAccountName = c.serviceAccountName
	j.Spec.Template.Spec.DeprecatedServiceAccount = c.deprecatedServiceAccount
	return j
}

// GetObjectKind implements runtime.Object (for client-go's cache, which may copy entries).
func (c *cachedJob) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject implements runtime.Object.
func (c *cachedJob) DeepCopyObject() runtime.Object {
	out := &cachedJob{ObjectMeta: *c.ObjectMeta.DeepCopy(), serviceAccountName: c.serviceAccountName, deprecatedServiceAccount: c.deprecatedServiceAccount}
	if c.suspend != nil {
		out.suspend = new(*c.suspend)
	}
	if c.managedBy != nil {
		out.managedBy = new(*c.managedBy)
	}
	return out
}

// asJob is the Job a Job cache entry stands for: a *cachedJob, or a *batchv1.Job that did
// not go through Stripper.Job (tests fill caches directly).
func asJob(obj any) (batchv1.Job, bool) {
	switch o := obj.(type) {
	case *cachedJob:
		return o.view(), true
	case *batchv1.Job:
		return *o, true
	}
	return batchv1.Job{}, false
}

// stripManagedFields drops managedFields, most of a stored object's size; for objects the
// transforms above do not know.
func stripManagedFields(obj any) (any, error) {
	if a, ok := obj.(metav1.ObjectMetaAccessor); ok {
		a.GetObjectMeta().SetManagedFields(nil)
	}
	return obj, nil
}
