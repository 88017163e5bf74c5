package jobs

import (
	"bytes"
	"fmt"
	"io"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/go-json-experiment/json/jsontext"

	"go.klusters.dev/credential-webhook/admission"
)

var _ admission.ObjectReader = (*Plugin)(nil)

// jobCases are objects beside the fixtures: absent parts, nulls, wrong types, malformed JSON,
// duplicate keys and invalid UTF-8.
var jobCases = []string{
	`{}`, `null`, `{"metadata":null,"spec":null}`, `{"spec":{"suspend":true,"managedBy":"x","template":{"spec":{"serviceAccount":"a"}}}}`,
	`{"metadata":{"labels":{"a":"b"},"annotations":{}}}`, `{"spec":{"suspend":"yes"}}`, `{"spec":`, `[]`, `"x"`,
	`{"metadata":{"namespace":"a","namespace":"b"}}`, "{\"metadata\":{\"namespace\":\"\xff\"}}", `{"spec":{"x":{"a":1,"a":2}}}`,
	`{} {}`, `{"spec":{"template":{"metadata":{"labels":5}}}}`, `{"spec":{"template":{"metadata":null}}}`,
	`{"spec":{"template":{"metadata":{"labels":{"a":"b"},"annotations":{"c":"d"}},"spec":{"serviceAccountName":"sa"}}}}`,
}

// checkDecodeObjectMatches: where ViewDecoder reads a Job's View, decodeJob reads the same Job
// from the raw object; where decodeJob refuses the object, so does ViewDecoder (the View is a
// superset, so it may refuse more: the server then falls back to decodeJob).
func checkDecodeObjectMatches(t *testing.T, raw []byte) {
	t.Helper()
	want, wantErr := decodeJob(raw)
	dec := jsontext.NewDecoder(bytes.NewReader(raw))
	got, err := ViewDecoder.DecodeObject(dec)
	if err == nil {
		if _, err2 := dec.ReadToken(); err2 != io.EOF {
			err = fmt.Errorf("more after the object (%v)", err2)
		}
	}
	if wantErr != nil && err == nil {
		t.Fatalf("ViewDecoder read %q, which decodeJob refuses: %v", raw, wantErr)
	}
	if err != nil {
		return
	}
	if wantErr != nil || !reflect.DeepEqual(got.(*View).job(), want) {
		t.Fatalf("ViewDecoder(%q) = %+v, decodeJob = %+v (%v)", raw, got.(*View).job(), want, wantErr)
	}
}

func TestDecodeObjectMatchesDecodeJob(t *testing.T) {
	for _, c := range jobCases {
		checkDecodeObjectMatches(t, []byte(c))
	}
	dirs, err := filepath.Glob("testdata/*/job.json")
	if err != nil || len(dirs) == 0 {
		t.Fatalf("no fixtures (%v)", err)
	}
	for _, dir := range dirs {
		checkDecodeObjectMatches(t, loadFixture(t, filepath.Dir(dir)).rawJob)
	}
}

func FuzzDecodeJobObject(f *testing.F) {
	for _, c := range jobCases {
		f.Add([]byte(c))
	}
	f.Fuzz(func(t *testing.T, raw []byte) { checkDecodeObjectMatches(t, raw) })
}

// A held Job's reason goes on the review's log line (Response.LogAttrs), not a line of its own.
func TestHoldOnTheReviewLogLine(t *testing.T) {
	f := loadFixture(t, "testdata/backup-aws-role-not-assigned")
	resp := review(t, f, f.rawJob, false, true)
	if resp.Patch.Len() == 0 {
		t.Fatal("the fixture is not held")
	}
	got := map[string]string{}
	for _, a := range resp.LogAttrs {
		got[a.Key] = a.Value.String()
	}
	if got["holdReason"] == "" || got["serviceaccount"] == "" {
		t.Errorf("log attributes %v, want the hold's reason and ServiceAccount", resp.LogAttrs)
	}
}
