package sweeper

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/markers"
	"go.klusters.dev/credential-webhook/patches"
)

// The pure decisions of finishing a pending ServiceAccount (finish.go): which pending claims to
// write (Triage) and the patch that records the outcome (FinishPatch). The decisions about held
// Jobs are package hold's.

// Finished is what finishing a pending ServiceAccount came to, for FinishPatch.
type Finished struct {
	// Set are the output annotations the clouds returned for the granted claims.
	Set map[string]string
	// Granted are the claims written to the cloud now.
	Granted markers.Claims
	// Dropped are the clouds whose claim was dropped (the ServiceAccount no longer makes it, or
	// it is no longer allowed); Clear their output annotations.
	Dropped []string
	// Clear lists output annotations to remove.
	Clear []string
}

// FinishPatch records on sa what finishing came to: it sets the output annotations, records the
// granted claims with sa's UID (keeping earlier grants to the same UID on other clouds), clears
// the outputs of dropped claims and removes our pending marker. It first tests that the pending
// marker still has the value read and that the object is the one read (its UID): if admission
// changed the claims meanwhile, or the name was re-created, the patch fails and the
// ServiceAccount is looked at again.
func FinishPatch(sa *corev1.ServiceAccount, f Finished) ([]byte, error) {
	ann := sa.Annotations
	pending, ok := ann[annotations.Pending]
	if !ok {
		return nil, fmt.Errorf("ServiceAccount %s/%s carries no %s annotation", sa.Namespace, sa.Name, annotations.Pending)
	}
	if sa.UID == "" {
		return nil, fmt.Errorf("ServiceAccount %s/%s has no UID", sa.Namespace, sa.Name)
	}
	ops := []jsonpatch.Operation{
		{Operation: "test", Path: "/metadata/uid", Value: string(sa.UID)},
		{Operation: "test", Path: patches.Pointer("metadata", "annotations", annotations.Pending), Value: pending},
	}
	var granted markers.Claims
	if uid, g, err := markers.ParseGranted(ann[annotations.Granted]); err == nil && uid == sa.UID {
		granted = g
	}
	for _, cloud := range f.Dropped {
		granted = granted.Without(cloud)
	}
	for _, c := range f.Granted {
		granted = granted.With(c)
	}
	b := patches.NewBuilder()
	for _, k := range slices.Sorted(maps.Keys(f.Set)) {
		if !strings.HasPrefix(k, annotations.Prefix) {
			b.SetMapEntry("/metadata/annotations", ann, k, f.Set[k])
		}
	}
	for _, k := range f.Clear {
		if _, set := f.Set[k]; !set {
			b.RemoveMapEntry("/metadata/annotations", ann, k)
		}
	}
	if len(granted) > 0 {
		b.SetMapEntry("/metadata/annotations", ann, annotations.Granted, markers.FormatGranted(sa.UID, granted))
	} else {
		b.RemoveMapEntry("/metadata/annotations", ann, annotations.Granted)
	}
	b.RemoveMapEntry("/metadata/annotations", ann, annotations.Pending)
	return json.Marshal(append(ops, b.Ops()...))
}

// Drop is a pending claim that will not be written, and why (for a Warning Event).
type Drop struct {
	Claim  markers.Claim
	Reason string
}

// Triage sorts the claims pending on sa: work are to be written to their cloud now; drops will
// not be, because the ServiceAccount no longer makes exactly that claim (its seed or identity
// changed or went away since admission accepted it), its cloud is not enabled, or its
// namespace is no longer allowed. A pending marker this server cannot read is an error: the
// caller drops it whole.
func Triage(sa *corev1.ServiceAccount, clouds map[string]Cloud, namespaceAllowed bool) (work []markers.Claim, drops []Drop, err error) {
	claims, err := markers.ParsePending(sa.Annotations[annotations.Pending])
	if err != nil {
		return nil, nil, err
	}
	for _, c := range claims {
		cloud, ok := clouds[c.Cloud]
		switch {
		case !ok:
			drops = append(drops, Drop{c, c.Cloud + " is not enabled on this server"})
		case !namespaceAllowed:
			drops = append(drops, Drop{c, fmt.Sprintf("namespace %q is no longer allowed (--allowed-namespaces)", sa.Namespace)})
		default:
			if now, ok := cloud.Claim(sa.Annotations); !ok || now != c {
				drops = append(drops, Drop{c, "the ServiceAccount no longer asks for the " + c.Cloud + " identity admission accepted"})
				continue
			}
			work = append(work, c)
		}
	}
	return work, drops, nil
}
