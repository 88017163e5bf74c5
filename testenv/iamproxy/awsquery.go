package iamproxy

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/xml"
	"fmt"
	"net/http"
	"regexp"
	"strings"
)

// stsActions are the STS Query actions. AssumeRoleWithWebIdentity (and
// AssumeRoleWithSAML) are sent unsigned, so the SigV4 credential scope
// cannot tell the service; the action name can.
var stsActions = map[string]bool{
	"AssumeRole": true, "AssumeRoleWithSAML": true, "AssumeRoleWithWebIdentity": true,
	"AssumeRoot": true, "DecodeAuthorizationMessage": true, "GetAccessKeyInfo": true,
	"GetCallerIdentity": true, "GetFederationToken": true, "GetSessionToken": true,
	"GetDelegatedAccessToken": true, "GetWebIdentityToken": true,
}

// serviceOf names the AWS service a Query request is for: the service in its
// SigV4 credential scope (Authorization header or presigned X-Amz-Credential),
// else "sts" for STS actions, else "unknown".
func serviceOf(r *http.Request, action string) string {
	if svc := scopeService(r.Header.Get("Authorization")); svc != "" {
		return svc
	}
	if svc := scopeService("Credential=" + r.URL.Query().Get("X-Amz-Credential")); svc != "" {
		return svc
	}
	if stsActions[action] {
		return "sts"
	}
	return "unknown"
}

// scopeService extracts the service from "... Credential=AKID/DATE/REGION/SERVICE/aws4_request, ..."
// (SigV4a scopes omit the region; the service is always second to last).
func scopeService(auth string) string {
	_, cred, ok := strings.Cut(auth, "Credential=")
	if !ok {
		return ""
	}
	cred, _, _ = strings.Cut(cred, ",")
	parts := strings.Split(strings.TrimSpace(cred), "/")
	if len(parts) < 4 || parts[len(parts)-1] != "aws4_request" {
		return ""
	}
	return parts[len(parts)-2]
}

// writeAWSError answers like the IAM/STS Query protocol does. The SDK maps
// Error/Code through the awsQueryError trait, so Code "LimitExceeded"
// surfaces as iam/types.LimitExceededException.
func writeAWSError(w http.ResponseWriter, svc string, status int, code, message string) {
	ns := map[string]string{
		"iam": "https://iam.amazonaws.com/doc/2010-05-08/",
		"sts": "https://sts.amazonaws.com/doc/2011-06-15/",
	}[svc]
	kind := "Sender"
	if status >= 500 {
		kind = "Receiver"
	}
	id := requestID()
	var b strings.Builder
	fmt.Fprintf(&b, `<ErrorResponse xmlns="%s"><Error><Type>%s</Type><Code>%s</Code><Message>`, ns, kind, code)
	_ = xml.EscapeText(&b, []byte(message))
	fmt.Fprintf(&b, `</Message></Error><RequestId>%s</RequestId></ErrorResponse>`, id)
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("x-amzn-RequestId", id)
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}

func requestID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// setSummaryEntry sets key to value in a GetAccountSummary response's
// SummaryMap, adding the entry when moto does not report it.
func setSummaryEntry(body []byte, key string, value int) []byte {
	entry := fmt.Appendf(nil, "<entry><key>%s</key><value>%d</value></entry>", key, value)
	re := regexp.MustCompile(`<entry>\s*<key>` + regexp.QuoteMeta(key) + `</key>\s*<value>[^<]*</value>\s*</entry>`)
	if re.Match(body) {
		return re.ReplaceAllLiteral(body, entry)
	}
	i := bytes.Index(body, []byte("</SummaryMap>"))
	if i < 0 {
		return body
	}
	return append(body[:i:i], append(entry, body[i:]...)...)
}
