package iamproxy

import (
	"bytes"
	"encoding/xml"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"time"
)

// maxSessions bounds the access keys remembered from STS answers (a long-running demo proxy).
const maxSessions = 10000

// serveS3 counts an S3 request, injects the faults that name it, refuses it with AccessDenied
// while the permissions of the role whose session signed it are propagating, and else passes
// it to moto.
func (p *Proxy) serveS3(w http.ResponseWriter, r *http.Request) {
	key := "s3:" + s3Action(r)
	p.mu.Lock()
	p.s3calls[key]++
	p.mu.Unlock()

	latency, fault, _ := p.drawFault(key)
	if latency > 0 {
		select {
		case <-time.After(latency):
		case <-r.Context().Done():
			return
		}
	}
	switch fault {
	case faultThrottle:
		p.log.Info("iamproxy: injected throttling", "action", key)
		writeS3Error(w, r, http.StatusServiceUnavailable, "SlowDown", "Please reduce your request rate.")
		return
	case faultServerError:
		p.log.Info("iamproxy: injected server error", "action", key)
		writeS3Error(w, r, http.StatusInternalServerError, "InternalError", "We encountered an internal error. Please try again.")
		return
	}

	if reason, role := p.s3Denial(r); reason != "" {
		rej := Rejection{Action: key, Code: "AccessDenied", Role: role, Reason: reason}
		p.log.Info("iamproxy: rejected", "action", rej.Action, "code", rej.Code, "role", rej.Role, "reason", rej.Reason)
		p.mu.Lock()
		if len(p.rejections) >= maxRejections {
			p.rejections = p.rejections[1:]
		}
		p.rejections = append(p.rejections, rej)
		p.mu.Unlock()
		writeS3Error(w, r, http.StatusForbidden, "AccessDenied", "Access Denied")
		return
	}
	p.rp.ServeHTTP(w, r)
}

// s3Denial returns why S3 would still refuse the request (and the role), or "": the request is
// signed by a session of a role whose permissions changed less than the S3 propagation delay ago.
func (p *Proxy) s3Denial(r *http.Request) (reason, role string) {
	akid := accessKeyID(r.Header.Get("Authorization"))
	p.mu.Lock()
	defer p.mu.Unlock()
	role = p.sessions[akid]
	changed := p.permsChanged[role]
	if role == "" || changed.IsZero() {
		return "", ""
	}
	if age := time.Since(changed); age < p.s3delay {
		return fmt.Sprintf("permissions of role %q changed %s ago, S3 propagation delay %s", role, age.Round(time.Millisecond), p.s3delay), role
	}
	return "", ""
}

// recordSession remembers which role the access key of a successful AssumeRoleWithWebIdentity
// answer belongs to.
func (p *Proxy) recordSession(r *http.Request, role string) *http.Request {
	return withResponseHook(r, func(resp *http.Response) error {
		if resp.StatusCode != http.StatusOK {
			return nil
		}
		body, err := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		resp.Body = io.NopCloser(bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("read AssumeRoleWithWebIdentity response: %w", err)
		}
		var out struct {
			AccessKeyID string `xml:"AssumeRoleWithWebIdentityResult>Credentials>AccessKeyId"`
		}
		if xml.Unmarshal(body, &out) != nil || out.AccessKeyID == "" {
			return nil
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		if _, ok := p.sessions[out.AccessKeyID]; !ok {
			p.sessionOrder = append(p.sessionOrder, out.AccessKeyID)
		}
		p.sessions[out.AccessKeyID] = role
		for len(p.sessionOrder) > maxSessions {
			delete(p.sessions, p.sessionOrder[0])
			p.sessionOrder = p.sessionOrder[1:]
		}
		return nil
	})
}

// recordPermissionsChange notes, once moto accepted it, that role's permissions changed.
func (p *Proxy) recordPermissionsChange(r *http.Request, role string) *http.Request {
	return withResponseHook(r, func(resp *http.Response) error {
		if resp.StatusCode == http.StatusOK {
			p.mu.Lock()
			p.permsChanged[role] = time.Now()
			p.mu.Unlock()
		}
		return nil
	})
}

// s3Action names an S3 request: the x-id the SDKs send for operations the method and path do
// not tell apart, else HeadBucket or HeadObject, else the method.
func s3Action(r *http.Request) string {
	if id := r.URL.Query().Get("x-id"); id != "" {
		return id
	}
	if r.Method == http.MethodHead {
		// Path-style: /bucket is the bucket, /bucket/key an object.
		if strings.Contains(strings.Trim(r.URL.Path, "/"), "/") {
			return "HeadObject"
		}
		return "HeadBucket"
	}
	return r.Method
}

var credentialKey = regexp.MustCompile(`Credential=([^/,\s]+)/`)

// accessKeyID is the access key ID in a SigV4 Authorization header.
func accessKeyID(auth string) string {
	if m := credentialKey.FindStringSubmatch(auth); m != nil {
		return m[1]
	}
	return ""
}

// writeS3Error answers like S3's REST-XML protocol does (no body for HEAD, as S3).
func writeS3Error(w http.ResponseWriter, r *http.Request, status int, code, message string) {
	id := requestID()
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("x-amz-request-id", id)
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+`<Error><Code>%s</Code><Message>`, code)
	_ = xml.EscapeText(&b, []byte(message))
	fmt.Fprintf(&b, `</Message><RequestId>%s</RequestId></Error>`, id)
	_, _ = w.Write([]byte(b.String()))
}
