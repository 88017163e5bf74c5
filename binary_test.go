package main

import (
	"os/exec"
	"strings"
	"testing"
)

// The server must not link client-go's clientset, informer factory, discovery or leader election
// (package kube says why: they bring in every API group's codecs, a quarter of the binary, and a
// binary's pages are resident memory). Their tests and tools may, through package kubeadapter.
func TestServerBinaryLinksNoClientset(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	forbidden := []string{
		"k8s.io/client-go/kubernetes",
		"k8s.io/client-go/informers",
		"k8s.io/client-go/discovery",
		"k8s.io/client-go/tools/leaderelection",
		"go.klusters.dev/credential-webhook/kube/kubeadapter",
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if dep == f || strings.HasPrefix(dep, f+"/") {
				t.Errorf("the server links %s", dep)
			}
		}
	}
}
