package azure

import (
	"fmt"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/patches"
)

// KV is one map entry to set.
type KV struct{ Key, Value string }

// ServiceAccountDecision is what admission adds to a ServiceAccount whose identity resolved.
type ServiceAccountDecision struct {
	// Set lists annotations to set, in a fixed order (client-id, then tenant-id).
	Set []KV
	// Warnings are admission warnings to return with the patch.
	Warnings []string
}

// DecideServiceAccount decides the output annotations for a ServiceAccount (existing is its
// metadata.annotations) given the identity ARM resolved for it.
//
// An annotation already holding the value is left alone. One holding a different value is
// overwritten, with a warning naming both values. Why overwrite rather than keep or deny: the
// KubeStash annotations name the identity explicitly, and the requester has passed the scope and
// requester checks for exactly that identity; the RBAC binding this server writes is for the
// resolved client ID, so keeping a different client-id would leave the ServiceAccount with a
// binding for one identity and pods asking for another (a backup failing later, far from the
// cause). Denying would make the KubeStash operator retry forever. The client-id annotation grants
// nothing by itself, so overwriting it gives the requester nothing they did not already have.
func DecideServiceAccount(existing map[string]string, r Resolved) ServiceAccountDecision {
	var d ServiceAccountDecision
	for _, kv := range []KV{{annotations.AzureClientID, r.ClientID}, {annotations.AzureTenantID, r.TenantID}} {
		cur, ok := existing[kv.Key]
		if ok && cur == kv.Value {
			continue
		}
		if ok {
			d.Warnings = append(d.Warnings, fmt.Sprintf("annotation %s was %s; replaced with %q, the value of managed identity %s",
				kv.Key, quote(cur), kv.Value, r.ResourceID))
		}
		d.Set = append(d.Set, kv)
	}
	return d
}

// Apply adds the decision to b. existing is the ServiceAccount's metadata.annotations as decoded
// from the raw object (nil when absent).
func (d ServiceAccountDecision) Apply(b *patches.Builder, existing map[string]string) {
	for _, kv := range d.Set {
		b.SetMapEntry("/metadata/annotations", existing, kv.Key, kv.Value)
	}
}

// JobDecision is what admission adds to a Job's pod template so the AKS identity-binding webhook
// handles its pods.
type JobDecision struct {
	Labels      []KV // pod template labels to add
	Annotations []KV // pod template annotations to add
	Warnings    []string
}

// DecideJobTemplate decides the pod-template label azure.workload.identity/use: "true" and
// annotation azure.workload.identity/use-identity-binding: "true". labels and annotations are the
// template's (spec.template.metadata). Nothing that is there is ever overwritten: a different
// value is the Job author's explicit choice (say "false" to opt a Job out), so it is kept and
// a warning says the pods will not get the identity.
func DecideJobTemplate(labels, annots map[string]string) JobDecision {
	var d JobDecision
	want := func(m map[string]string, key, what string) bool {
		cur, ok := m[key]
		if !ok {
			return true
		}
		if cur != "true" {
			d.Warnings = append(d.Warnings, fmt.Sprintf("pod template %s %s=%s kept as set; its pods may not get the Azure managed identity", what, key, quote(cur)))
		}
		return false
	}
	if want(labels, annotations.AzureUseLabel, "label") {
		d.Labels = append(d.Labels, KV{annotations.AzureUseLabel, "true"})
	}
	if want(annots, annotations.AzureUseIdentityBinding, "annotation") {
		d.Annotations = append(d.Annotations, KV{annotations.AzureUseIdentityBinding, "true"})
	}
	return d
}

// Apply adds the decision to b. metaPresent says whether the raw Job has spec.template.metadata
// at all (the apiserver always sends it, a hand-written review may not); labels and annots are
// its maps as decoded (nil when absent).
func (d JobDecision) Apply(b *patches.Builder, metaPresent bool, labels, annots map[string]string) {
	if len(d.Labels) == 0 && len(d.Annotations) == 0 {
		return
	}
	const meta = "/spec/template/metadata"
	if !metaPresent {
		m := map[string]any{}
		if len(d.Labels) > 0 {
			m["labels"] = kvMap(d.Labels)
		}
		if len(d.Annotations) > 0 {
			m["annotations"] = kvMap(d.Annotations)
		}
		b.Set(meta, m)
		return
	}
	for _, kv := range d.Labels {
		b.SetMapEntry(meta+"/labels", labels, kv.Key, kv.Value)
	}
	for _, kv := range d.Annotations {
		b.SetMapEntry(meta+"/annotations", annots, kv.Key, kv.Value)
	}
}

func kvMap(kvs []KV) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[kv.Key] = kv.Value
	}
	return m
}
