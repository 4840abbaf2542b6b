package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// attackerSource is the address the lockout attacks come from: loopback, but not the
// address the victims (this test's clients) use.
const attackerSource = "127.0.0.2"

func dialerFrom(source string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: 5 * time.Second}
}

// healthzFrom asks /healthz on a new connection from source; the status, or 0 when no
// answer came within 3 s.
func healthzFrom(d *daemon, source string) int {
	tr := &http.Transport{DialContext: dialerFrom(source).DialContext, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 3 * time.Second}).Get(d.url + "/healthz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestIdleConnectionsDoNotLockOut: 4,200 keep-alive connections without a key, from one
// address, each asking /healthz again every two seconds. Before, they took all 4,096 of the
// API's places: /healthz stopped answering (a load balancer takes the node out) and callers
// with a key waited in the listen queue. Now an address holds at most 256 connections that
// carried no authenticated request, idle ones make room for new ones, and the rest of the
// places are kept for callers with a key.
func TestIdleConnectionsDoNotLockOut(t *testing.T) {
	d := startDaemon(t)
	const conns = 4200
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	var open atomic.Int64 // attacker connections that got an answer in the last round
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for i := 0; i < conns; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := dialerFrom(attackerSource).DialContext(ctx, "tcp", strings.TrimPrefix(d.url, "http://"))
			if err != nil {
				return
			}
			defer c.Close()
			r := bufio.NewReader(c)
			served := false
			for round := 0; ; round++ {
				c.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: codebox\r\n\r\n"); err != nil {
					break
				}
				resp, err := http.ReadResponse(r, nil)
				if err != nil {
					break
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if !served {
					served = true
					open.Add(1)
				}
				select {
				case <-stop:
					return
				case <-time.After(2 * time.Second):
				}
			}
			if served {
				open.Add(-1)
			}
		}()
	}
	time.Sleep(6 * time.Second) // every connection made, answered and idle at least once

	t.Logf("attacker connections holding on: %d of %d", open.Load(), conns)
	for i := 0; i < 10; i++ {
		if got := healthzFrom(d, "127.0.0.1"); got != 200 {
			t.Fatalf("/healthz from another address during the flood: %d (0: no answer within 3 s)", got)
		}
		if got := healthzFrom(d, attackerSource); got != 200 {
			t.Fatalf("/healthz from the attacker's own address during the flood: %d", got)
		}
	}
	callCtx, callCancel := context.WithTimeout(ctx, 20*time.Second)
	resp, err := d.client.Execute(callCtx, "e2e-lockout-"+randomHex(3), "6 * 7", 0)
	callCancel()
	if err != nil || resp.ResultText == nil || *resp.ResultText != "42" {
		t.Fatalf("an execute with the key during the flood: %+v, %v", resp, err)
	}
	if held := open.Load(); held > 256+16 { // the bound, and answers in flight as it closed them
		t.Fatalf("the attacker's address holds %d connections", held)
	}
	close(stop)
	wg.Wait()
}

// TestTokenlessStreamsDoNotLockOut: 1,100 websocket handshakes without a token, from one
// address, each held open without its auth message. Before, each took one of the 1,024
// stream places until its auth deadline (5 s), and the console and every streaming client
// got 503. Now they share a budget of their own (64; 8 an address) with a 3 s deadline.
func TestTokenlessStreamsDoNotLockOut(t *testing.T) {
	d := startDaemon(t)
	url := "ws" + strings.TrimPrefix(d.url, "http") + "/api/v1/stream?user_uuid="
	attacker := websocket.Dialer{NetDialContext: dialerFrom(attackerSource).DialContext, HandshakeTimeout: 10 * time.Second}
	var upgraded, refused atomic.Int64
	var wg sync.WaitGroup
	held := make(chan *websocket.Conn, 1100)
	for i := 0; i < 1100; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, resp, err := attacker.Dial(url+fmt.Sprintf("e2e-flood-%d", i), nil)
			if err != nil {
				if resp != nil && resp.StatusCode == http.StatusServiceUnavailable {
					refused.Add(1)
				}
				return
			}
			upgraded.Add(1)
			held <- c
		}()
	}
	wg.Wait()
	close(held)
	defer func() {
		for c := range held {
			c.Close()
		}
	}()
	t.Logf("tokenless handshakes: %d upgraded, %d refused with 503", upgraded.Load(), refused.Load())

	// Meanwhile: a client with the token in its headers, and one that sends it as its
	// first message (as the console does), each run code.
	for _, header := range []bool{true, false} {
		h := http.Header{}
		if header {
			h.Set("X-Auth-Token", d.token)
		}
		c, resp, err := websocket.DefaultDialer.Dial(url+"e2e-streamer-"+randomHex(3), h)
		if err != nil {
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			t.Fatalf("a streaming client (token in header: %v) during the flood: %v (status %d)", header, err, status)
		}
		ws := &wsClient{t, c}
		if !header {
			ws.send(map[string]any{"type": "auth", "token": d.token})
		}
		ws.send(map[string]any{"type": "execute", "id": "c1", "code": "print(6 * 7)"})
		got := ws.until("c1")
		if got[0].Text != "42\n" || got[len(got)-1].Status != "ok" {
			t.Fatalf("streamed call (token in header: %v): %+v", header, got)
		}
		c.Close()
	}

	if upgraded.Load() > 8 {
		t.Fatalf("%d tokenless sockets of one address were upgraded; the bound is 8", upgraded.Load())
	}
	// The held sockets are closed at their auth deadline.
	for c := range held {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		start := time.Now()
		_, _, err := c.ReadMessage()
		var ce *websocket.CloseError
		if !asCloseError(err, &ce) || ce.Code != websocket.ClosePolicyViolation || time.Since(start) > 5*time.Second {
			t.Fatalf("a silent tokenless socket: %v after %s, want a policy-violation close within its 3 s deadline", err, time.Since(start))
		}
	}
}

func asCloseError(err error, ce **websocket.CloseError) bool {
	e, ok := err.(*websocket.CloseError)
	if ok {
		*ce = e
	}
	return ok
}

// TestHeldRequestBytesAreBounded: 40 callers with the key each send an execute body of
// 8 MB, all but its last bytes, and stall. Each connection's own bound (8 MiB) held, but
// nothing bounded them all: the daemon held them all at once. Now one budget
// (--request-memory-mb, 64 here) does, and callers past it get 503 with Retry-After.
func TestHeldRequestBytesAreBounded(t *testing.T) {
	d := startDaemon(t, "--request-memory-mb", "64")
	before := procBytes(t, d.cmd.Process.Pid, "VmRSS")
	const callers, size = 40, 8<<20 - 1024
	body := `{"code": "` + strings.Repeat("x", size-12) + `"}`
	var refused atomic.Int64
	var wg sync.WaitGroup
	conns := make(chan net.Conn, callers)
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", strings.TrimPrefix(d.url, "http://"))
			if err != nil {
				return
			}
			conns <- c
			fmt.Fprintf(c, "POST /api/v1/execute?user_uuid=e2e-held-%d HTTP/1.1\r\nHost: codebox\r\nX-Auth-Token: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", i, d.token, len(body))
			c.SetDeadline(time.Now().Add(20 * time.Second))
			io.WriteString(c, body[:len(body)-100]) // all but the end: the body is never complete
			// An answer before the body ends is a refusal.
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil {
				if resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "" {
					refused.Add(1)
				}
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	held := procBytes(t, d.cmd.Process.Pid, "VmRSS")
	close(conns)
	for c := range conns {
		c.Close()
	}
	t.Logf("%d callers stalling 8 MB bodies: %d refused (503); daemon RSS %d MiB before, %d MiB with the bodies held",
		callers, refused.Load(), before>>20, held>>20)
	if refused.Load() < callers-10 { // 64 MiB hold at most 8 of them
		t.Errorf("only %d of %d callers were refused", refused.Load(), callers)
	}
	if growth := held - before; growth > 160<<20 {
		t.Errorf("the daemon's RSS grew by %d MiB holding the bodies (budget 64 MiB)", growth>>20)
	}
	// Given back: a call goes through once they are gone.
	eventually(t, 10*time.Second, "an execute after the stalled callers left", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		r, err := d.client.Execute(ctx, "e2e-held-after", "1 + 1", 0)
		return err == nil && r.ResultText != nil && *r.ResultText == "2"
	})
}
