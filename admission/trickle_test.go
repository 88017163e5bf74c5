package admission

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// trickleHeader marks the requests of trickle, so that the test knows when each is in the handler.
const trickleHeader = "X-Test-Trickle"

// newTrickleServer is newServerWith whose handler reports on entered every request of trickle
// as it enters the review handler.
func newTrickleServer(t *testing.T, opts Options) (*httptest.Server, chan struct{}) {
	t.Helper()
	h := NewHandler(opts)
	entered := make(chan struct{}, 64)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get(trickleHeader) != "" {
			entered <- struct{}{}
		}
		h.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv, entered
}

// trickle opens a connection that posts a review declaring contentLength bytes and sends only
// its first byte, as a client on the pod network that wants to hold the server's limits would.
// It waits until the request is in the handler; the connection stays open until the test ends.
func trickle(t *testing.T, srv *httptest.Server, entered <-chan struct{}, contentLength int) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "POST /mutate/pods HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s: 1\r\n\r\n{", contentLength, trickleHeader)
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the trickling request never reached the handler")
	}
	return c
}

// Requests whose body has not arrived hold no review slot: with MaxInFlight 2, four connections
// that sent their headers and one byte leave the slots to a review that arrives whole. The slot
// used to be taken before the body was read, and 512 such connections (the default) answered
// every review 429 for as long as they kept trickling.
func TestTricklingBodiesHoldNoSlot(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	srv, entered := newTrickleServer(t, Options{Metrics: m, MaxInFlight: 2, MaxInFlightBytes: -1,
		Routes: []Route{{Path: "/mutate/pods", Name: "pods", Kind: "Pod"}}})
	for range 4 {
		trickle(t, srv, entered, 5000)
	}
	if code, out, raw := post(t, srv.URL+"/mutate/pods", "application/json", review("whole", "", "Pod", `{}`)); code != 200 || out["response"].(map[string]any)["uid"] != "whole" {
		t.Fatalf("review while four bodies trickle: %d %s", code, raw)
	}
	if got := testutil.ToFloat64(m.Rejected.WithLabelValues("pods", RejectInFlight)); got != 0 {
		t.Errorf("rejected{inflight} = %v, want 0", got)
	}
}

// A body is charged to the byte budget for what it sent, not for what its headers declare: four
// connections declaring 900 KiB each and sending one byte leave a 1 MiB budget to a 600 KiB
// review. Charged by Content-Length, one of them held 900 KiB of it (the others were refused)
// and the real review was answered 429; 8 such requests held the default 32 MiB.
func TestDeclaredLengthsTakeNoBudget(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	srv, entered := newTrickleServer(t, Options{Metrics: m, MaxInFlight: -1, MaxInFlightBytes: 1 << 20,
		Routes: []Route{{Path: "/mutate/pods", Name: "pods", Kind: "Pod"}}})
	for range 4 {
		trickle(t, srv, entered, 900<<10)
	}
	obj := `{"metadata":{"annotations":{"pad":"` + strings.Repeat("x", 600<<10) + `"}}}`
	if code, out, raw := post(t, srv.URL+"/mutate/pods", "application/json", review("big", "", "Pod", obj)); code != 200 || out["response"].(map[string]any)["uid"] != "big" {
		t.Fatalf("600 KiB review while four 900 KiB bodies are declared: %d %.200s", code, raw)
	}
}

// A body that does not arrive is given up on: the server answers 400 once bodyReadTime of its
// declared length has passed (2 s for a few KiB), instead of keeping what it holds for the whole
// ReadTimeout. The bound checked is bodyReadTimeout, the most it may take.
func TestTricklingBodyIsCutOff(t *testing.T) {
	srv, entered := newTrickleServer(t, Options{Routes: []Route{{Path: "/mutate/pods", Name: "pods", Kind: "Pod"}}})
	c := trickle(t, srv, entered, 5000)
	if err := c.SetReadDeadline(time.Now().Add(bodyReadTimeout + 5*time.Second)); err != nil {
		t.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer to a body that never came: %v", err)
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusBadRequest {
		t.Fatalf("answered %d, want 400", res.StatusCode)
	}
}

func TestBodyReadTime(t *testing.T) {
	for _, tc := range []struct {
		contentLength int64
		want          time.Duration
	}{
		{-1, bodyReadTimeout}, // unknown length
		{0, 2 * time.Second},
		{5000, 2*time.Second + 4768*time.Microsecond},
		{1 << 20, 3 * time.Second},
		{4 << 20, 6 * time.Second},
		{64 << 20, bodyReadTimeout},
	} {
		if got := bodyReadTime(tc.contentLength); got.Round(time.Millisecond) != tc.want.Round(time.Millisecond) {
			t.Errorf("bodyReadTime(%d) = %s, want %s", tc.contentLength, got, tc.want)
		}
	}
}
