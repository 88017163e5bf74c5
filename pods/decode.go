package pods

import (
	"fmt"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	corev1 "k8s.io/api/core/v1"
)

// decodePod reads from the raw Pod only what inject looks at, into a podView.
//
// Why not decode the whole corev1.Pod: on the 4 KB KubeStash backup Pod that is most of the
// plugin's CPU (resource quantities, timestamps and managedFields nobody here reads). JSON v2
// (the decoder the admission package uses for the review itself) into podView, a struct of only
// the fields inject reads, skips everything else inside the tokenizer. It replaced a 385-line
// hand-written walker: BenchmarkDecode measured 36 allocations and 5.5 KB against the walker's
// 76 and 7.7 KB, and 0.45 to 0.8 of its CPU (a loaded 2-vCPU machine), so nothing was left to
// justify a second JSON dialect. inject reads the view itself: copying it into a skeleton
// corev1.Pod cost 7 allocations and 3.8 KB per review (mostly the zeroing of corev1's large
// Container and Volume structs), about 3 % of the Pod route's CPU with its garbage collection
// (perf on the binary, issue 18).
//
// Contract kept by the tests: for every input the apiserver's decoder (sigs.k8s.io/json, case
// sensitive) accepts into a corev1.Pod and that has no duplicate keys and is valid UTF-8,
// decodePod succeeds and yields what fromPod takes from the fully decoded Pod
// (TestDecodePodMatchesFullDecode over the fixtures, FuzzDecodePod beyond them), and inject gives
// the same patch on it as Inject on the full Pod (TestDecodeViewEquivalent). Whoever makes inject
// read a new field must add it to podView and fromPod.
//
// JSON v2's defaults are the stricter ones on purpose: duplicate keys and invalid UTF-8 are
// refused (an apiserver never sends either; a body that has them was not written by one, and
// duplicate keys are how a reader is made to see another object than the writer), keys match
// case-sensitively like the apiserver's decoder, and a null value is the zero value.
func decodePod(raw []byte) (*podView, error) {
	v := &podView{}
	if err := json.Unmarshal(raw, v); err != nil {
		return nil, fmt.Errorf("decoding the Pod: %w", err)
	}
	return v, nil
}

// decodePodFrom is decodePod reading the Pod from dec, the review's decoder (Plugin.DecodeObject).
func decodePodFrom(dec *jsontext.Decoder) (*podView, error) {
	v := &podView{}
	if err := json.UnmarshalDecode(dec, v); err != nil {
		return nil, err
	}
	return v, nil
}

// podView is the part of a Pod that inject reads. Slices stay nil when absent and empty when
// present but empty, since the patches for the two differ.
type podView struct {
	Metadata struct {
		Namespace   string            `json:"namespace"`
		Annotations map[string]string `json:"annotations"`
		Labels      map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec podSpecView `json:"spec"`
}

type podSpecView struct {
	ServiceAccountName string            `json:"serviceAccountName"`
	NodeSelector       map[string]string `json:"nodeSelector"`
	OS                 *struct {
		Name corev1.OSName `json:"name"`
	} `json:"os"`
	SecurityContext *runAsView      `json:"securityContext"`
	Volumes         []nameView      `json:"volumes"`
	InitContainers  []containerView `json:"initContainers"`
	Containers      []containerView `json:"containers"`
}

type nameView struct {
	Name string `json:"name"`
}

type runAsView struct {
	RunAsUser *int64 `json:"runAsUser"`
}

type mountView struct {
	Name      string `json:"name"`
	MountPath string `json:"mountPath"`
}

type containerView struct {
	Name            string      `json:"name"`
	Env             []nameView  `json:"env"`
	VolumeMounts    []mountView `json:"volumeMounts"`
	SecurityContext *runAsView  `json:"securityContext"`
}

// fromPod is the view of a decoded corev1.Pod, for Inject's callers that have one: the same
// values decodePod reads from its JSON (nil and empty slices kept apart, maps shared).
func fromPod(p *corev1.Pod) *podView {
	v := &podView{}
	v.Metadata.Namespace, v.Metadata.Annotations, v.Metadata.Labels = p.Namespace, p.Annotations, p.Labels
	vs, s := &v.Spec, &p.Spec
	vs.ServiceAccountName, vs.NodeSelector = s.ServiceAccountName, s.NodeSelector
	if s.OS != nil {
		vs.OS = &struct {
			Name corev1.OSName `json:"name"`
		}{Name: s.OS.Name}
	}
	if s.SecurityContext != nil {
		vs.SecurityContext = &runAsView{RunAsUser: s.SecurityContext.RunAsUser}
	}
	if s.Volumes != nil {
		vs.Volumes = make([]nameView, len(s.Volumes))
		for i := range s.Volumes {
			vs.Volumes[i].Name = s.Volumes[i].Name
		}
	}
	vs.InitContainers, vs.Containers = fromContainers(s.InitContainers), fromContainers(s.Containers)
	return v
}

func fromContainers(cs []corev1.Container) []containerView {
	if cs == nil {
		return nil
	}
	vs := make([]containerView, len(cs))
	for i := range cs {
		c, v := &cs[i], &vs[i]
		v.Name = c.Name
		if c.Env != nil {
			v.Env = make([]nameView, len(c.Env))
			for j := range c.Env {
				v.Env[j].Name = c.Env[j].Name
			}
		}
		if c.VolumeMounts != nil {
			v.VolumeMounts = make([]mountView, len(c.VolumeMounts))
			for j, m := range c.VolumeMounts {
				v.VolumeMounts[j] = mountView{Name: m.Name, MountPath: m.MountPath}
			}
		}
		if c.SecurityContext != nil {
			v.SecurityContext = &runAsView{RunAsUser: c.SecurityContext.RunAsUser}
		}
	}
	return vs
}
