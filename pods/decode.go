package pods

import (
	"bytes"
	"fmt"

	"github.com/go-json-experiment/json"
	"github.com/go-json-experiment/json/jsontext"
	corev1 "k8s.io/api/core/v1"

	"go.klusters.dev/credential-webhook/annotations"
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
		Namespace   string     `json:"namespace"`
		Annotations podStrings `json:"annotations"`
		Labels      podStrings `json:"labels"`
	} `json:"metadata"`
	Spec podSpecView `json:"spec"`
}

type podSpecView struct {
	ServiceAccountName string     `json:"serviceAccountName"`
	NodeSelector       podStrings `json:"nodeSelector"`
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
// values decodePod reads from its JSON (nil and empty slices kept apart, maps picked).
func fromPod(p *corev1.Pod) *podView {
	v := &podView{}
	v.Metadata.Namespace, v.Metadata.Annotations, v.Metadata.Labels = p.Namespace, pickStrings(p.Annotations), pickStrings(p.Labels)
	vs, s := &v.Spec, &p.Spec
	vs.ServiceAccountName, vs.NodeSelector = s.ServiceAccountName, pickStrings(s.NodeSelector)
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

// podStrings is one of the Pod's string maps (labels, annotations, node selector) holding only
// the entries whose key inject reads (podKey); nil when none is there. The KubeStash backup Pod
// carries ten labels: decoding them into a map cost 21 of the Pod route's 121 allocations per
// review, for one lookup of the opt-out label. Every value is still checked to be a string or
// null, as the map decoder did, and the Decoder still refuses duplicate keys and invalid UTF-8.
type podStrings map[string]string

// podKey returns the key inject reads that k spells, as the constant (no allocation).
func podKey(k []byte) (string, bool) {
	switch string(k) { // compiled to comparisons, without converting k
	case annotations.AWSSkipPodIdentityLabel:
		return annotations.AWSSkipPodIdentityLabel, true
	case annotations.ResticCredentials:
		return annotations.ResticCredentials, true
	case annotations.LegacyResticCredentials:
		return annotations.LegacyResticCredentials, true
	case annotations.AWSTokenExpiration:
		return annotations.AWSTokenExpiration, true
	case annotations.AWSSkipContainers:
		return annotations.AWSSkipContainers, true
	case corev1.LabelOSStable:
		return corev1.LabelOSStable, true
	}
	return "", false
}

// pickStrings is the podStrings of a decoded map: the entries podKey keeps, nil when none is.
func pickStrings(m map[string]string) podStrings {
	var out podStrings
	for k, v := range m {
		if key, ok := podKey([]byte(k)); ok {
			if out == nil {
				out = podStrings{}
			}
			out[key] = v
		}
	}
	return out
}

// UnmarshalJSONFrom reads a JSON object of strings (or null) keeping what podKey keeps
// (json.UnmarshalerFrom, called by the JSON v2 decoder of podView).
func (m *podStrings) UnmarshalJSONFrom(dec *jsontext.Decoder) error {
	*m = nil
	switch k := dec.PeekKind(); k {
	case 'n':
		_, err := dec.ReadToken()
		return err
	case '{':
	default:
		if _, err := dec.ReadValue(); err != nil {
			return err
		}
		return fmt.Errorf("want an object of strings, got a JSON %s", k)
	}
	if _, err := dec.ReadToken(); err != nil {
		return err
	}
	for dec.PeekKind() != '}' {
		name, err := dec.ReadValue() // an object name: the Decoder checks it is unique
		if err != nil {
			return err
		}
		// Names without an escape (all an apiserver writes) are compared in place.
		unq := name[1 : len(name)-1]
		if bytes.IndexByte(unq, '\\') >= 0 {
			if unq, err = jsontext.AppendUnquote(nil, name); err != nil {
				return err
			}
		}
		key, keep := podKey(unq)
		if k := dec.PeekKind(); k != '"' && k != 'n' {
			if _, err := dec.ReadValue(); err != nil {
				return err
			}
			return fmt.Errorf("value of %s: want a string, got a JSON %s", name, k)
		}
		val, err := dec.ReadValue()
		if err != nil {
			return err
		}
		if !keep {
			continue
		}
		s := ""
		if val.Kind() == '"' {
			unq, err := jsontext.AppendUnquote(nil, val)
			if err != nil {
				return err
			}
			s = string(unq)
		}
		if *m == nil {
			*m = podStrings{}
		}
		(*m)[key] = s
	}
	_, err := dec.ReadToken()
	return err
}
