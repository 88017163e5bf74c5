package aws

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"go.klusters.dev/credential-webhook/annotations"
)

// policyDiff returns the IAM writes that make target's permissions match seed's, in the order
// they must be sent. With full=false it only adds what is missing (completing a half-created
// role: fewer permissions than the seed, never more). With full=true it also removes extras and
// fixes changed documents, description, session length and tags: the drift repair of
// SyncFromSeed. target must have been read with readRole (with inline documents when full), and
// seed must hold the documents inlineDocsNeeded names. The trust policy is not part of it:
// placement owns the subjects.
func policyDiff(seed, target *roleSpec, full bool) ([]write, error) {
	name := target.arn.Name
	var out []write
	// The boundary first: the IAM policy lets PutRolePolicy and AttachRolePolicy touch only roles
	// that already carry it. seed.boundary is never empty (readSeed refuses such a seed); nothing
	// ever removes a boundary.
	if seed.boundary != "" && target.boundary != seed.boundary {
		out = append(out, putBoundary{role: name, boundary: seed.boundary})
	}
	for _, p := range seed.attached {
		if _, ok := slices.BinarySearch(target.attached, p); !ok {
			out = append(out, attachPolicy{role: name, policy: p})
		}
	}
	for _, p := range slices.Sorted(maps.Keys(seed.inline)) {
		have, ok := target.inline[p]
		if ok && !full {
			continue
		}
		want := seed.inline[p]
		if want == "" {
			return nil, fmt.Errorf("internal error: inline policy %s of seed %s not read before comparing", p, seed.arn)
		}
		if ok && have == want {
			continue
		}
		out = append(out, putInline{role: name, policy: p, document: want})
	}
	if !full {
		return out, nil
	}
	for _, p := range target.attached {
		if _, ok := slices.BinarySearch(seed.attached, p); !ok {
			out = append(out, detachPolicy{role: name, policy: p})
		}
	}
	for _, p := range slices.Sorted(maps.Keys(target.inline)) {
		if _, ok := seed.inline[p]; !ok {
			out = append(out, deleteInline{role: name, policy: p})
		}
	}
	if seed.description != target.description || (seed.maxSession != 0 && seed.maxSession != target.maxSession) {
		out = append(out, updateRole{role: name, description: seed.description, maxSession: seed.maxSession})
	}
	want := copiedTags(seed)
	set := map[string]string{}
	for k, v := range want {
		if have, ok := target.tags[k]; !ok || have != v {
			set[k] = v
		}
	}
	if len(set) > 0 {
		// Always restate the seed tag: the IAM policy allows TagRole only with it (see doc.go).
		set[annotations.SeedTag] = want[annotations.SeedTag]
		out = append(out, tagRole{role: name, tags: set})
	}
	var unset []string
	for k := range target.tags {
		if _, ok := want[k]; !ok && !strings.HasPrefix(strings.ToLower(k), "aws:") {
			unset = append(unset, k)
		}
	}
	if len(unset) > 0 {
		slices.Sort(unset)
		out = append(out, untagRole{role: name, keys: unset})
	}
	return out, nil
}

// inlineDocsNeeded names the seed's inline policies whose documents policyDiff will compare or
// copy and that are not read yet: the seed is listed without documents, and a role that already
// has a policy of that name is only compared in a full sync.
func inlineDocsNeeded(seed, target *roleSpec, full bool) []string {
	var out []string
	for _, p := range slices.Sorted(maps.Keys(seed.inline)) {
		if _, ok := target.inline[p]; ok && !full {
			continue
		}
		if seed.inline[p] == "" {
			out = append(out, p)
		}
	}
	return out
}

// deletionWrites are the writes that delete a role: IAM requires its managed policies detached
// and its inline policies deleted first.
func deletionWrites(spec *roleSpec) []write {
	var out []write
	for _, p := range spec.attached {
		out = append(out, detachPolicy{role: spec.arn.Name, policy: p})
	}
	for _, p := range slices.Sorted(maps.Keys(spec.inline)) {
		out = append(out, deleteInline{role: spec.arn.Name, policy: p})
	}
	return append(out, deleteRole{role: spec.arn.Name})
}
