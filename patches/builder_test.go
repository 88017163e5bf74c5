package patches

import (
	"encoding/json"
	"reflect"
	"testing"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
)

// apply runs the builder's operations against raw with an independent RFC 6902 implementation,
// the way the apiserver does, and returns the result decoded.
func apply(t *testing.T, raw string, b *Builder) map[string]any {
	t.Helper()
	ops, err := json.Marshal(b.Ops())
	if err != nil {
		t.Fatal(err)
	}
	p, err := jsonpatch.DecodePatch(ops)
	if err != nil {
		t.Fatalf("decode patch %s: %v", ops, err)
	}
	out, err := p.Apply([]byte(raw))
	if err != nil {
		t.Fatalf("apply %s to %s: %v", ops, raw, err)
	}
	var m map[string]any
	if err := json.Unmarshal(out, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func decode(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPointer(t *testing.T) {
	for in, want := range map[string]string{
		"a":                          "/metadata/a",
		"eks.amazonaws.com/role-arn": "/metadata/eks.amazonaws.com~1role-arn",
		"x~y/z":                      "/metadata/x~0y~1z",
	} {
		if got := Pointer("metadata", in); got != want {
			t.Errorf("Pointer(metadata, %q) = %q, want %q", in, got, want)
		}
	}
}

func TestMapEntries(t *testing.T) {
	const ann = "/metadata/annotations"
	cases := []struct {
		name  string
		raw   string
		build func(b *Builder, existing map[string]string)
		want  string
		nOps  int
	}{
		{
			name: "absent map, two entries fold into one add",
			raw:  `{"metadata":{"name":"x"},"future":[1,2]}`,
			build: func(b *Builder, e map[string]string) {
				b.SetMapEntry(ann, e, "a/b", "1")
				b.SetMapEntry(ann, e, "c", "2")
			},
			want: `{"metadata":{"name":"x","annotations":{"a/b":"1","c":"2"}},"future":[1,2]}`,
			nOps: 1,
		},
		{
			name:  "existing equal value: no op",
			raw:   `{"metadata":{"annotations":{"a":"1"}}}`,
			build: func(b *Builder, e map[string]string) { b.SetMapEntry(ann, e, "a", "1") },
			want:  `{"metadata":{"annotations":{"a":"1"}}}`,
		},
		{
			name:  "existing different value: replace the leaf only",
			raw:   `{"metadata":{"annotations":{"a":"1","keep":"k"}}}`,
			build: func(b *Builder, e map[string]string) { b.SetMapEntry(ann, e, "a", "2") },
			want:  `{"metadata":{"annotations":{"a":"2","keep":"k"}}}`,
			nOps:  1,
		},
		{
			name: "same key set twice: one op, last value",
			raw:  `{"metadata":{"annotations":{}}}`,
			build: func(b *Builder, e map[string]string) {
				b.SetMapEntry(ann, e, "a", "1")
				b.SetMapEntry(ann, e, "a", "2")
			},
			want: `{"metadata":{"annotations":{"a":"2"}}}`,
			nOps: 1,
		},
		{
			name: "remove then set back to the same value cancels out",
			raw:  `{"metadata":{"annotations":{"a":"1"}}}`,
			build: func(b *Builder, e map[string]string) {
				b.RemoveMapEntry(ann, e, "a")
				b.SetMapEntry(ann, e, "a", "1")
			},
			want: `{"metadata":{"annotations":{"a":"1"}}}`,
		},
		{
			name: "remove then set to another value replaces",
			raw:  `{"metadata":{"annotations":{"a":"1"}}}`,
			build: func(b *Builder, e map[string]string) {
				b.RemoveMapEntry(ann, e, "a")
				b.SetMapEntry(ann, e, "a", "2")
			},
			want: `{"metadata":{"annotations":{"a":"2"}}}`,
			nOps: 1,
		},
		{
			name:  "remove absent key: no op",
			raw:   `{"metadata":{"annotations":{"b":"1"}}}`,
			build: func(b *Builder, e map[string]string) { b.RemoveMapEntry(ann, e, "a") },
			want:  `{"metadata":{"annotations":{"b":"1"}}}`,
		},
		{
			name:  "remove present key",
			raw:   `{"metadata":{"annotations":{"a":"1","b":"2"}}}`,
			build: func(b *Builder, e map[string]string) { b.RemoveMapEntry(ann, e, "a") },
			want:  `{"metadata":{"annotations":{"b":"2"}}}`,
			nOps:  1,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var obj struct {
				Metadata struct {
					Annotations map[string]string `json:"annotations"`
				} `json:"metadata"`
			}
			_ = json.Unmarshal([]byte(tc.raw), &obj)
			b := NewBuilder()
			tc.build(b, obj.Metadata.Annotations)
			if b.Len() != tc.nOps {
				t.Errorf("ops = %d (%+v), want %d", b.Len(), b.Ops(), tc.nOps)
			}
			if got, want := apply(t, tc.raw, b), decode(t, tc.want); !reflect.DeepEqual(got, want) {
				t.Errorf("got %v, want %v", got, want)
			}
		})
	}
}

func TestAppendAndSet(t *testing.T) {
	raw := `{"spec":{"containers":[{"name":"a","restartPolicy":"Always","futureField":{"x":1},"env":[{"name":"E","value":"1"}]},{"name":"b"}]}}`
	b := NewBuilder()
	b.Append("/spec/containers/0/env", 1, map[string]any{"name": "F", "value": "2"})
	b.Append("/spec/containers/0/env", 1, map[string]any{"name": "G", "value": "3"})
	b.Append("/spec/containers/1/env", -1, map[string]any{"name": "F", "value": "2"})
	b.Append("/spec/containers/1/env", -1, map[string]any{"name": "G", "value": "3"})
	b.Append("/spec/volumes", -1, map[string]any{"name": "v"})
	b.Set("/spec/suspend", true)
	b.Set("/spec/suspend", false)
	got := apply(t, raw, b)
	want := decode(t, `{"spec":{"suspend":false,"volumes":[{"name":"v"}],"containers":[
		{"name":"a","restartPolicy":"Always","futureField":{"x":1},"env":[{"name":"E","value":"1"},{"name":"F","value":"2"},{"name":"G","value":"3"}]},
		{"name":"b","env":[{"name":"F","value":"2"},{"name":"G","value":"3"}]}]}}`)
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v\nwant %v", got, want)
	}
	for _, op := range b.Ops() {
		if op.Operation != "add" {
			t.Errorf("unexpected %s at %s: only adds expected", op.Operation, op.Path)
		}
		if op.Path == "/spec/containers/0/env" {
			t.Errorf("whole existing array rewritten: %+v", op)
		}
	}
}

func TestEmptyBuilderHasNoPatch(t *testing.T) {
	if ops := NewBuilder().Ops(); ops != nil {
		t.Fatalf("empty builder returned %v", ops)
	}
}
