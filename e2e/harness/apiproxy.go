package harness

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

// APIProxy is a plain TCP forwarder on 127.0.0.1 that plays the network between a webhook
// replica and the apiserver: it copies bytes both ways and understands nothing of them (TLS is
// end to end, so the replica still verifies the apiserver's certificate and the apiserver still
// sees the replica's token). Cut takes that network down and Restore brings it back; the other
// direction (apiserver to webhook, through the frontend) is not affected.
type APIProxy struct {
	// Addr is the 127.0.0.1:PORT the proxy listens on.
	Addr string

	target string
	ln     net.Listener
	wg     sync.WaitGroup

	mu     sync.Mutex
	cut    bool
	closed bool
	// conns holds both ends of every forwarded connection, so Cut can close them all.
	conns map[net.Conn]struct{}
	stats APIProxyStats
}

// APIProxyStats counts what the proxy did.
type APIProxyStats struct {
	// Forwarded is the number of connections accepted and forwarded to the apiserver.
	Forwarded int
	// Reset is the number of connections accepted while cut and reset at once.
	Reset int
	// Severed is the number of open connections Cut closed.
	Severed int
}

// NewAPIProxy listens on a free 127.0.0.1 port and forwards every connection to target
// (host:port). Close stops it.
func NewAPIProxy(target string) (*APIProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("harness: API proxy listen: %w", err)
	}
	p := &APIProxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Cut closes every open connection (with a TCP reset, as a broken path looks to a client that
// still writes) and, until Restore, resets every new connection right after accepting it.
//
// The listener stays open on purpose: closing it would make new connections fail with
// "connection refused" at once, but would also free the port for anything else on the machine
// to take during the outage, and Restore could not get it back.
func (p *APIProxy) Cut() {
	p.mu.Lock()
	p.cut = true
	open := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		open = append(open, c)
	}
	p.mu.Unlock()
	for _, c := range open {
		reset(c)
	}
	p.mu.Lock()
	p.stats.Severed += len(open) / 2 // both ends of each connection are tracked
	p.mu.Unlock()
}

// Restore forwards new connections again.
func (p *APIProxy) Restore() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// IsCut reports whether the proxy is cut.
func (p *APIProxy) IsCut() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cut
}

// Stats returns the counts so far.
func (p *APIProxy) Stats() APIProxyStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// Close stops listening, closes every connection and waits for the forwarding goroutines.
func (p *APIProxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	open := make([]net.Conn, 0, len(p.conns))
	for c := range p.conns {
		open = append(open, c)
	}
	p.mu.Unlock()
	err := p.ln.Close()
	for _, c := range open {
		_ = c.Close()
	}
	p.wg.Wait()
	return err
}

func (p *APIProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Temporary accept errors (EMFILE and the like): try again shortly.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		p.mu.Lock()
		cut, closed := p.cut, p.closed
		if cut {
			p.stats.Reset++
		}
		p.mu.Unlock()
		if cut || closed {
			reset(c)
			continue
		}
		p.wg.Add(1)
		go p.forward(c)
	}
}

// forward dials the apiserver for client and copies both ways until either side ends; then
// both connections are closed (HTTP over TLS has no use for half-closed connections).
func (p *APIProxy) forward(client net.Conn) {
	defer p.wg.Done()
	upstream, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		reset(client)
		return
	}
	p.mu.Lock()
	if p.cut || p.closed { // cut while dialling
		if p.cut {
			p.stats.Reset++
		}
		p.mu.Unlock()
		reset(client)
		_ = upstream.Close()
		return
	}
	p.conns[client], p.conns[upstream] = struct{}{}, struct{}{}
	p.stats.Forwarded++
	p.mu.Unlock()

	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		done <- struct{}{}
	}
	go pipe(upstream, client)
	go pipe(client, upstream)
	<-done
	_ = client.Close()
	_ = upstream.Close()
	<-done
	p.mu.Lock()
	delete(p.conns, client)
	delete(p.conns, upstream)
	p.mu.Unlock()
}

// reset closes c with SO_LINGER 0, so the peer gets a TCP RST rather than an orderly FIN.
func reset(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = c.Close()
}

// APIServerProxy starts an APIProxy in front of the apiserver and writes a copy of
// WebhookKubeconfig that reaches the apiserver through it (same credentials, same CA; pass it
// to a replica with --kubeconfig). The proxy is closed at the end of the test.
func (c *Cluster) APIServerProxy(tb testing.TB) (proxy *APIProxy, kubeconfigPath string) {
	tb.Helper()
	u, err := url.Parse(c.APIServerURL)
	if err != nil {
		tb.Fatalf("harness: apiserver URL %q: %v", c.APIServerURL, err)
	}
	proxy, err = NewAPIProxy(u.Host)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = proxy.Close() })

	cfg, err := clientcmd.LoadFromFile(c.WebhookKubeconfig)
	if err != nil {
		tb.Fatalf("harness: read %s: %v", c.WebhookKubeconfig, err)
	}
	for name, cl := range cfg.Clusters {
		su, err := url.Parse(cl.Server)
		if err != nil {
			tb.Fatalf("harness: cluster %s server %q: %v", name, cl.Server, err)
		}
		// The apiserver's certificate names 127.0.0.1, which is also where the proxy listens, so
		// verification passes unchanged. Were the kubeconfig to name the apiserver by another
		// host, keep verifying against that name.
		if h := su.Hostname(); h != "127.0.0.1" && cl.TLSServerName == "" {
			cl.TLSServerName = h
		}
		su.Host = proxy.Addr
		cl.Server = su.String()
	}
	f, err := os.CreateTemp(c.Dir, "webhook-apiproxy-*.kubeconfig")
	if err != nil {
		tb.Fatalf("harness: %v", err)
	}
	kubeconfigPath = f.Name()
	_ = f.Close()
	if err := clientcmd.WriteToFile(*cfg, kubeconfigPath); err != nil {
		tb.Fatalf("harness: write %s: %v", kubeconfigPath, err)
	}
	return proxy, kubeconfigPath
}
