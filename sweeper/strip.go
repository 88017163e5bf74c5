package sweeper

import (
	"strings"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
//   - Job: name, namespace, uid, resourceVersion, creation time, deletionTimestamp; labels
//     app.kubernetes.io/managed-by (hold.IsHeld) and kueue.x-k8s.io/queue-name
//     (hold.ManagedElsewhere); annotations held-since and hold-reason (hold.IsHeld,
//     hold.HeldSince, hold.ReleasePatch, the Held Event); spec.suspend, spec.managedBy; the pod
//     template's serviceAccountName and deprecated serviceAccount (hold.ServiceAccountName).
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

// filterMap returns the entries of m whose key keep accepts; nil only when m is nil.
func filterMap(m map[string]string, keep func(string) bool) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, min(len(m), 8))
	for k, v := range m {
		if keep(k) {
			out[k] = v
		}
	}
	return out
}

func keepServiceAccountAnnotation(k string) bool {
	return serviceAccountAnnotations[k] || strings.HasPrefix(k, annotations.Prefix)
}

// StripServiceAccount is the transform of every ServiceAccount informer: the metadata this
// server reads and nothing else (no labels, managed fields, secrets, owner references).
func StripServiceAccount(obj any) (any, error) {
	sa, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return stripManagedFields(obj) // cache.DeletedFinalStateUnknown and the like pass through
	}
	return &corev1.ServiceAccount{
		TypeMeta: sa.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: sa.Name, Namespace: sa.Namespace, UID: sa.UID, ResourceVersion: sa.ResourceVersion,
			CreationTimestamp: sa.CreationTimestamp, DeletionTimestamp: sa.DeletionTimestamp,
			Annotations: filterMap(sa.Annotations, keepServiceAccountAnnotation),
		},
	}, nil
}

// StripJob is the transform of the sweeper's Job informer (see the list above): a cached
// KubeStash Job is otherwise mostly its pod template and whatever a tenant annotated it with.
func StripJob(obj any) (any, error) {
	job, ok := obj.(*batchv1.Job)
	if !ok {
		return stripManagedFields(obj)
	}
	out := &batchv1.Job{
		TypeMeta: job.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name: job.Name, Namespace: job.Namespace, UID: job.UID, ResourceVersion: job.ResourceVersion,
			CreationTimestamp: job.CreationTimestamp, DeletionTimestamp: job.DeletionTimestamp,
			Labels:      filterMap(job.Labels, func(k string) bool { return jobLabels[k] }),
			Annotations: filterMap(job.Annotations, func(k string) bool { return jobAnnotations[k] }),
		},
	}
	out.Spec.Suspend = job.Spec.Suspend
	out.Spec.ManagedBy = job.Spec.ManagedBy // hold.ManagedElsewhere reads it
	out.Spec.Template.Spec.ServiceAccountName = job.Spec.Template.Spec.ServiceAccountName
	out.Spec.Template.Spec.DeprecatedServiceAccount = job.Spec.Template.Spec.DeprecatedServiceAccount
	return out, nil
}

// stripManagedFields drops managedFields, most of a stored object's size; for objects the
// transforms above do not know.
func stripManagedFields(obj any) (any, error) {
	if a, ok := obj.(metav1.ObjectMetaAccessor); ok {
		a.GetObjectMeta().SetManagedFields(nil)
	}
	return obj, nil
}
