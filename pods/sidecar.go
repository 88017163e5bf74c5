package pods

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"go.klusters.dev/credential-webhook/annotations"
	"go.klusters.dev/credential-webhook/stscreds"
)

// Why a sidecar at all: restic 0.14's minio-go cannot do web identity, but reads static keys from
// AWS_SHARED_CREDENTIALS_FILE. The sidecar (this binary's aws-credentials subcommand) trades the
// projected token for STS credentials and keeps that file fresh in a memory-backed emptyDir.

// startupProbeAttempts × 1 s matches stscreds.DefaultMaxWait, the sidecar's own bound on the
// first fetch (trust-policy propagation), so the probe does not give up before the sidecar does.
const startupProbeAttempts = int32(stscreds.DefaultMaxWait / time.Second)

// resticRequested: annotations.ResticCredentials "true" on the Pod or its ServiceAccount, or
// the former key, annotations.LegacyResticCredentials, on the Pod (legacy reports that one was
// what asked). The former key is not read on ServiceAccounts: the own-annotations guard strips
// keys under our prefix there from everyone but this server and the allowed requesters, so users
// never could opt in with it, and the new key replaces it.
func resticRequested(podAnn, saAnn map[string]string) (requested, legacy bool) {
	if isTrue(podAnn[annotations.ResticCredentials]) || isTrue(saAnn[annotations.ResticCredentials]) {
		return true, false
	}
	if isTrue(podAnn[annotations.LegacyResticCredentials]) {
		return true, true
	}
	return false, false
}

func isTrue(v string) bool {
	if v == "" {
		return false // the common case (no such annotation): no ParseBool error to allocate
	}
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	return err == nil && b
}

func hasContainer(spec *podSpecView, name string) bool {
	for i := range spec.InitContainers {
		if spec.InitContainers[i].Name == name {
			return true
		}
	}
	for i := range spec.Containers {
		if spec.Containers[i].Name == name {
			return true
		}
	}
	return false
}

// sidecarUser picks the sidecar's runAsUser. The credentials file has mode 0600, so the consumers
// can read it only as the user who wrote it (or as root). When the non-skipped containers run as
// one non-root user, the sidecar runs as that user too; otherwise it keeps its image's non-root
// user, which root consumers can still read, and containers of several other users cannot:
// that case is warned about.
func sidecarUser(spec *podSpecView, skip map[string]bool) (*int64, string) {
	var podUID *int64
	if spec.SecurityContext != nil {
		podUID = spec.SecurityContext.RunAsUser
	}
	uids := map[int64]bool{}
	collect := func(cs []containerView) {
		for i := range cs {
			if skip[cs[i].Name] {
				continue
			}
			uid := podUID
			if sc := cs[i].SecurityContext; sc != nil && sc.RunAsUser != nil {
				uid = sc.RunAsUser
			}
			if uid != nil && *uid != 0 {
				uids[*uid] = true
			}
		}
	}
	collect(spec.InitContainers)
	collect(spec.Containers)
	switch len(uids) {
	case 0:
		return nil, ""
	case 1:
		for uid := range uids {
			return &uid, ""
		}
	}
	list := make([]string, 0, len(uids))
	for uid := range uids {
		list = append(list, strconv.FormatInt(uid, 10))
	}
	sort.Strings(list)
	return nil, fmt.Sprintf("containers run as several users (%s); the %s file (mode 0600) is readable by root and by the %s sidecar's user only",
		strings.Join(list, ", "), EnvCredentialsFile, SidecarName)
}

// sidecarContainer is the native sidecar: an init container with restartPolicy Always keeps
// running beside the main containers, and the kubelet starts the next init container only once
// its startup probe succeeded, i.e. once the first credentials file exists.
func sidecarContainer(cfg Config, env []corev1.EnvVar, runAsUser *int64) corev1.Container {
	bin := cfg.sidecarBinary()
	always := corev1.ContainerRestartPolicyAlways
	yes, no := true, false
	env = append(env, corev1.EnvVar{Name: stscreds.EnvPodName, ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"},
	}})
	return corev1.Container{
		Name:          SidecarName,
		Image:         cfg.SidecarImage,
		Command:       []string{bin, stscreds.Subcommand},
		RestartPolicy: &always,
		Env:           env,
		VolumeMounts: []corev1.VolumeMount{
			{Name: TokenVolumeName, ReadOnly: true, MountPath: cfg.mountPath()},
			{Name: CredentialsVolumeName, MountPath: CredentialsMountPath},
		},
		StartupProbe: &corev1.Probe{
			ProbeHandler:     corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{bin, stscreds.Subcommand, stscreds.CheckFlag}}},
			PeriodSeconds:    1,
			FailureThreshold: startupProbeAttempts,
		},
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("10m"),
				corev1.ResourceMemory: resource.MustParse("32Mi"),
			},
			Limits: corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")},
		},
		SecurityContext: &corev1.SecurityContext{
			RunAsNonRoot:             &yes,
			RunAsUser:                runAsUser,
			ReadOnlyRootFilesystem:   &yes,
			AllowPrivilegeEscalation: &no,
			Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
			SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TerminationMessagePolicy: corev1.TerminationMessageFallbackToLogsOnError,
	}
}

// credentialsVolume is memory-backed: the credentials never touch the node's disk.
func credentialsVolume() corev1.Volume {
	limit := resource.MustParse("1Mi")
	return corev1.Volume{
		Name: CredentialsVolumeName,
		VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
			Medium:    corev1.StorageMediumMemory,
			SizeLimit: &limit,
		}},
	}
}
