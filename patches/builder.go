// Package patches builds RFC 6902 JSON patches addressed into the raw object a review carried.
//
// Patches are never computed by re-serialising a decoded Go struct and diffing it: a struct drops
// every field our k8s.io/api version does not know (a newer apiserver's fields, CRD extensions),
// and a diff of two serialisations tends to replace whole arrays. Instead, callers read the decoded
// object and emit targeted operations: add a map entry, append to an array by index, set a leaf.
// Unknown fields are untouched because nothing outside the addressed paths is ever written.
package patches

import (
	"strconv"
	"strings"

	"gomodules.xyz/jsonpatch/v2"
)

// Builder accumulates operations for one object. Several admission plugins may share one Builder,
// so it remembers what it created (a map that was absent, elements it appended) to keep later
// operations valid: a second annotation added to a missing map becomes an entry of the map the
// first one created, and a second append lands at the next index.
type Builder struct {
	ops []jsonpatch.Operation
	// created maps a map path this builder created to the entries it holds, so later entries
	// are added into it rather than creating it twice.
	created map[string]map[string]any
	// arrays are the arrays this builder appended to, with what it appended: a handful per
	// object (a Pod's containers' env and mounts, its volumes), so a slice searched in order
	// costs less than the two maps it replaced.
	arrays []appendedArray
}

// appendedArray is one array path this builder appended to: how many elements, and whether it
// created the array (absent in the raw object).
type appendedArray struct {
	path    string
	n       int
	created bool
}

// array is the record of path, added if absent.
func (b *Builder) array(path string) *appendedArray {
	for i := range b.arrays {
		if b.arrays[i].path == path {
			return &b.arrays[i]
		}
	}
	if b.arrays == nil {
		b.arrays = make([]appendedArray, 0, 8)
	}
	b.arrays = append(b.arrays, appendedArray{path: path})
	return &b.arrays[len(b.arrays)-1]
}

// add appends op, with room for a Pod's worth of operations at the first one.
func (b *Builder) add(op jsonpatch.Operation) {
	if b.ops == nil {
		b.ops = make([]jsonpatch.Operation, 0, 16)
	}
	b.ops = append(b.ops, op)
}

// NewBuilder returns an empty Builder.
func NewBuilder() *Builder { return &Builder{} }

// Ops returns the operations in the order they were added. A nil slice means no patch.
func (b *Builder) Ops() []jsonpatch.Operation { return b.ops }

// Len is the number of operations.
func (b *Builder) Len() int { return len(b.ops) }

// Pointer joins JSON-pointer segments, escaping "~" and "/" inside each segment (RFC 6901).
// Pointer("metadata", "annotations", "a/b") == "/metadata/annotations/a~1b".
func Pointer(parts ...string) string {
	var sb strings.Builder
	for _, p := range parts {
		sb.WriteByte('/')
		sb.WriteString(escape(p))
	}
	return sb.String()
}

func escape(s string) string {
	if !strings.ContainsAny(s, "~/") {
		return s
	}
	return strings.ReplaceAll(strings.ReplaceAll(s, "~", "~0"), "/", "~1")
}

// SetMapEntry sets key=value in the string map at path. existing is that map as decoded from the
// raw object (nil when the map is absent). It emits nothing when the entry already has the value.
// An entry with a different value is replaced (a scalar leaf, never the whole map).
func (b *Builder) SetMapEntry(path string, existing map[string]string, key, value string) {
	if m, ok := b.created[path]; ok {
		// The map is ours: fold the entry into the single "add map" operation we emitted, so
		// the patch stays minimal and its order irrelevant.
		m[key] = value
		return
	}
	if existing == nil {
		m := map[string]any{key: value}
		if b.created == nil {
			b.created = map[string]map[string]any{}
		}
		b.created[path] = m
		b.add(jsonpatch.Operation{Operation: "add", Path: path, Value: m})
		return
	}
	cur, ok := existing[key]
	p := path + "/" + escape(key)
	// An earlier operation from this builder may already target the same key: a removal is
	// taken back, an add or replace is overwritten, so the patch never holds two for one key.
	for i := range b.ops {
		if b.ops[i].Path != p {
			continue
		}
		if b.ops[i].Operation == "remove" {
			b.ops = append(b.ops[:i], b.ops[i+1:]...)
			break
		}
		b.ops[i].Value = value
		return
	}
	if ok && cur == value {
		return
	}
	op := "add"
	if ok {
		op = "replace"
	}
	b.add(jsonpatch.Operation{Operation: op, Path: p, Value: value})
}

// RemoveMapEntry removes key from the string map at path when the raw object has it.
func (b *Builder) RemoveMapEntry(path string, existing map[string]string, key string) {
	if m, ok := b.created[path]; ok {
		delete(m, key)
		return
	}
	if _, ok := existing[key]; !ok {
		return
	}
	p := path + "/" + escape(key)
	for i := range b.ops {
		if b.ops[i].Path == p {
			b.ops = append(b.ops[:i], b.ops[i+1:]...)
			break
		}
	}
	b.add(jsonpatch.Operation{Operation: "remove", Path: p})
}

// Append appends v to the array at path, whose length in the raw object is n; n < 0 means the
// array is absent and is created holding v. Elements are addressed by index, never by rewriting
// the array.
func (b *Builder) Append(path string, n int, v any) {
	a := b.array(path)
	if n < 0 && !a.created {
		a.created, a.n = true, 1
		b.add(jsonpatch.Operation{Operation: "add", Path: path, Value: []any{v}})
		return
	}
	if n < 0 {
		n = 0
	}
	idx := n + a.n
	a.n++
	b.add(jsonpatch.Operation{Operation: "add", Path: path + "/" + strconv.Itoa(idx), Value: v})
}

// Insert adds v at index i of the array at path (which must exist), shifting later elements.
// Used where order matters, such as a native sidecar that must start before other init containers.
func (b *Builder) Insert(path string, i int, v any) {
	b.add(jsonpatch.Operation{Operation: "add", Path: path + "/" + strconv.Itoa(i), Value: v})
}

// Set adds or replaces the leaf at path (an "add" on an existing member replaces it, RFC 6902 4.1).
func (b *Builder) Set(path string, v any) {
	for i := range b.ops {
		if b.ops[i].Path == path && b.ops[i].Operation == "add" {
			b.ops[i].Value = v
			return
		}
	}
	b.add(jsonpatch.Operation{Operation: "add", Path: path, Value: v})
}
