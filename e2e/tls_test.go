package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/codebox/codebox/api"
)

// testCA issues the certificates of a TLS test.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
	file string // the CA's PEM
}

func newTestCA(t *testing.T, dir string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "codebox e2e CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{cert: cert, key: key, pool: x509.NewCertPool(), file: filepath.Join(dir, "ca.pem")}
	ca.pool.AddCert(cert)
	if err := os.WriteFile(ca.file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	return ca
}

// issue writes a server certificate for 127.0.0.1 and localhost with serial, and its key.
func (ca *testCA) issue(t *testing.T, dir string, serial int64) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "codeboxd e2e"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem")
	// Written to temporary files and renamed, as a certificate renewal does.
	for f, b := range map[string][]byte{certFile: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyFile: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})} {
		if err := os.WriteFile(f+".tmp", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(f+".tmp", f); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile
}

// servedSerial is the serial of the certificate the daemon at addr shows now.
func servedSerial(t *testing.T, addr string, roots *x509.CertPool) int64 {
	t.Helper()
	c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots})
	if err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// TestTLS: with --tls-cert and --tls-key, the API, the event and websocket streams and MCP
// are served over TLS, and nothing in cleartext; SIGHUP takes a renewed certificate and
// keeps the one in use when the new files are broken; HAProxy terminates TLS in front of a
// node and verifies the node's certificate; the Python client speaks it with a CA file.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t, dir)
	certFile, keyFile := ca.issue(t, dir, 100)
	d := startDaemonWith(t, daemonOptions{token: randomHex(16), roots: ca.pool}, "--tls-cert", certFile, "--tls-key", keyFile)
	addr := strings.TrimPrefix(d.url, "https://")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	user := "e2e-tls-" + randomHex(3)

	// REST and server-sent events, with the Go client.
	r, err := d.client.Execute(ctx, user, "x = 6 * 7\nx", 0)
	if err != nil || r.ResultText == nil || *r.ResultText != "42" {
		t.Fatalf("execute over TLS: %+v %v", r, err)
	}
	var streamed strings.Builder
	for e, err := range d.client.Stream(ctx, user, api.ExecuteRequest{Code: "print(x + 1)"}) {
		if err != nil {
			t.Fatalf("event stream over TLS: %v", err)
		}
		streamed.WriteString(e.Text)
	}
	if streamed.String() != "43\n" {
		t.Fatalf("event stream over TLS: %q", streamed.String())
	}
	// The websocket.
	wsDialer := websocket.Dialer{TLSClientConfig: &tls.Config{RootCAs: ca.pool}}
	conn, _, err := wsDialer.Dial("wss://"+addr+"/api/v1/stream?user_uuid="+user, http.Header{"X-Auth-Token": {d.token}})
	if err != nil {
		t.Fatalf("wss: %v", err)
	}
	ws := &wsClient{t, conn}
	ws.send(map[string]any{"type": "execute", "id": "c1", "code": "print(x + 2)"})
	if got := ws.until("c1"); got[0].Text != "44\n" {
		t.Fatalf("wss: %+v", got)
	}
	conn.Close()
	// MCP.
	cs, err := mcpConnect(t, ctx, d, d.token, nil)
	if err != nil {
		t.Fatalf("MCP over TLS: %v", err)
	}
	if got := texts(callTool(t, ctx, cs, "run_code", map[string]any{"code": "print(x + 3)", "session": user})); got != "45\n\n" {
		t.Fatalf("MCP run_code over TLS: %q", got)
	}
	cs.Close()
	// A client nobody here wrote.
	if out, err := exec.Command("curl", "-sS", "--cacert", ca.file, "https://"+addr+"/healthz").CombinedOutput(); err != nil || !strings.Contains(string(out), `"ok"`) {
		t.Fatalf("curl --cacert: %v %s", err, out)
	}
	// Nothing in cleartext: the token never travels unencrypted to this port.
	resp, err := http.Get("http://" + addr + "/healthz")
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("plain HTTP to the TLS port: %d", resp.StatusCode)
		}
	}

	// The Python client, with the CA file.
	py := exec.Command(debianPython, "-W", "error::UserWarning", "-c", fmt.Sprintf(`
import codebox
c = codebox.Client(%q, %q, cafile=%q)
print(c.session(%q).run("x + 4").text)
c.close()`, d.url, d.token, ca.file, user))
	py.Env = append(os.Environ(), "PYTHONPATH="+filepath.Join("..", "clients", "python"), "PYTHONDONTWRITEBYTECODE=1")
	if out, err := py.CombinedOutput(); err != nil || strings.TrimSpace(string(out)) != "46" {
		t.Fatalf("the Python client over TLS: %v\n%s", err, out)
	}

	// The CLI, with the CA.
	cli := exec.Command(filepath.Join(filepath.Dir(env.bin), "codebox"), "--url", d.url, "--ca-cert", ca.file, "exec", "-u", user, "print(x + 6)")
	cli.Env = append(os.Environ(), "AUTH_TOKEN="+d.token)
	if out, err := cli.CombinedOutput(); err != nil || string(out) != "48\n" {
		t.Fatalf("the CLI over TLS: %v %q", err, out)
	}

	// A renewed certificate is taken on SIGHUP; broken files are refused and the one in use stays.
	if s := servedSerial(t, addr, ca.pool); s != 100 {
		t.Fatalf("serial %d served, want 100", s)
	}
	ca.issue(t, dir, 101)
	d.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, 5*time.Second, "the renewed certificate is served", func() bool { return servedSerial(t, addr, ca.pool) == 101 })
	os.WriteFile(keyFile, []byte("not a key"), 0o600)
	d.cmd.Process.Signal(syscall.SIGHUP)
	eventually(t, 5*time.Second, "the broken files are refused", func() bool {
		return strings.Contains(d.logs.String(), "TLS certificate not reloaded")
	})
	if s := servedSerial(t, addr, ca.pool); s != 101 {
		t.Fatalf("after a broken renewal, serial %d served, want 101", s)
	}

	// HAProxy in front: TLS from the caller to HAProxy, and from HAProxy to the node,
	// whose certificate it verifies.
	hdir := t.TempDir()
	hcert, hkey := ca.issue(t, hdir, 200)
	pemBytes := append(must(os.ReadFile(hcert)), must(os.ReadFile(hkey))...)
	pemFile := filepath.Join(hdir, "haproxy.pem")
	os.WriteFile(pemFile, pemBytes, 0o600)
	nodes := filepath.Join(hdir, "nodes")
	os.WriteFile(nodes, []byte("n1 "+addr+"\n"), 0o644)
	listen, stats := fmt.Sprintf("127.0.0.1:%d", freePort(t)), fmt.Sprintf("127.0.0.1:%d", freePort(t))
	gen := exec.Command("../scripts/haproxy-config.sh", nodes, listen, stats, filepath.Join(hdir, "admin.sock"))
	gen.Env = append(os.Environ(), "CODEBOX_TLS_PEM="+pemFile, "CODEBOX_NODE_CA="+ca.file)
	cfg, err := gen.Output()
	if err != nil {
		t.Fatalf("haproxy-config.sh: %v", err)
	}
	cfgFile := filepath.Join(hdir, "haproxy.cfg")
	os.WriteFile(cfgFile, cfg, 0o644)
	hp := exec.Command("haproxy", "-db", "-f", cfgFile)
	hp.Env = append(os.Environ(), "CODEBOX_STATS_USER="+statsUser, "CODEBOX_STATS_PASSWORD="+statsPassword)
	hlogs := &syncBuffer{}
	hp.Stdout, hp.Stderr = hlogs, hlogs
	if err := hp.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { hp.Process.Kill(); hp.Wait() }()
	via := api.NewClient("https://"+listen, d.token).WithTLS(&tls.Config{RootCAs: ca.pool})
	eventually(t, 20*time.Second, "HAProxy serves over TLS", func() bool {
		cctx, ccancel := context.WithTimeout(ctx, 5*time.Second)
		defer ccancel()
		_, err := via.Status(cctx)
		return err == nil
	})
	r, err = via.Execute(ctx, user, "x + 5", 0)
	if err != nil || r.ResultText == nil || *r.ResultText != "47" || r.NewSession {
		t.Fatalf("through HAProxy over TLS: %+v %v\n%s", r, err, hlogs.String())
	}
	d.client.Release(ctx, user)
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
