package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// TestMetrics scrapes the metrics listener after some work and finds the counters moved.
func TestMetrics(t *testing.T) {
	port := freePort(t)
	d := startDaemon(t, "--metrics-listen", fmt.Sprintf("127.0.0.1:%d", port))
	user := "e2e-metrics-" + randomHex(3)
	d.exec(t, user, "1 + 1")
	d.exec(t, user, "undefined_name")
	if _, err := d.client.PutFile(context.Background(), user, "/sandbox/m.txt", strings.NewReader("12345")); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", port))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	values := map[string]float64{}
	for _, line := range strings.Split(string(body), "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			values[line[:i]] = v
		}
	}
	for name, min := range map[string]float64{
		`codebox_executions_total{outcome="ok"}`:            1,
		`codebox_executions_total{outcome="error"}`:         1,
		`codebox_execute_duration_seconds_count`:            2,
		`codebox_worker_creates_total{result="ok"}`:         1,
		`codebox_worker_create_duration_seconds_count`:      1,
		`codebox_workers_busy`:                              1,
		`codebox_file_transfer_bytes_total{direction="in"}`: 5,
		`process_resident_memory_bytes`:                     1,
	} {
		if values[name] < min {
			t.Errorf("%s = %v, want at least %v", name, values[name], min)
		}
	}
	d.client.Release(context.Background(), user)
}
