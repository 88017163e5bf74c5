package admission

import (
	"encoding/base64"
	admissionv1 "k8s.io/api/admission/v1"
	"testing"
)

func mustB64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("patch is not base64: %v", err)
	}
	return b
}

func opOf(s string) admissionv1.Operation { return admissionv1.Operation(s) }
