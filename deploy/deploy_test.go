package deploy

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/yaml"
)

// object is a decoded manifest: its kind, name and typed value.
type object struct {
	file, kind, name string
	v                any
}

// strict decodes one YAML document into the type of its kind, refusing unknown fields: a
// misspelt field would otherwise be dropped silently by the cluster.
func strict(t *testing.T, file string, doc []byte) object {
	t.Helper()
	j, err := yaml.YAMLToJSON(doc)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name      string `json:"name"`
			Namespace string `json:"namespace"`
		} `json:"metadata"`
	}
	if err := json.Unmarshal(j, &meta); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	var v any
	switch meta.APIVersion + " " + meta.Kind {
	case "apps/v1 DaemonSet":
		v = &appsv1.DaemonSet{}
	case "apps/v1 Deployment":
		v = &appsv1.Deployment{}
	case "v1 Service":
		v = &corev1.Service{}
	case "v1 ConfigMap":
		v = &corev1.ConfigMap{}
	case "v1 Secret":
		v = &corev1.Secret{}
	case "v1 Namespace":
		v = &corev1.Namespace{}
	case "networking.k8s.io/v1 NetworkPolicy":
		v = &networkingv1.NetworkPolicy{}
	default:
		t.Fatalf("%s: unexpected %s %s", file, meta.APIVersion, meta.Kind)
	}
	dec := json.NewDecoder(bytes.NewReader(j))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("%s: %s %s: %v", file, meta.Kind, meta.Metadata.Name, err)
	}
	if meta.Kind != "Namespace" && meta.Metadata.Namespace != "codebox" {
		t.Errorf("%s: %s %s is not in namespace codebox", file, meta.Kind, meta.Metadata.Name)
	}
	return object{file, meta.Kind, meta.Metadata.Name, v}
}

func manifests(t *testing.T) map[string]object {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests: %v", err)
	}
	objs := map[string]object{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range regexp.MustCompile(`(?m)^---$`).Split(string(b), -1) {
			if strings.TrimSpace(regexp.MustCompile(`(?m)^#.*$`).ReplaceAllString(doc, "")) == "" {
				continue
			}
			o := strict(t, f, []byte(doc))
			key := o.kind + "/" + o.name
			if _, dup := objs[key]; dup {
				t.Errorf("%s defined twice", key)
			}
			objs[key] = o
		}
	}
	return objs
}

// TestKubernetesManifests decodes every manifest strictly into the Kubernetes API types
// and checks what codeboxd needs of its pod and what HAProxy needs of its.
func TestKubernetesManifests(t *testing.T) {
	objs := manifests(t)
	get := func(key string) any {
		o, ok := objs[key]
		if !ok {
			t.Fatalf("no %s among %v", key, slices.Sorted(func(yield func(string) bool) {
				for k := range objs {
					if !yield(k) {
						return
					}
				}
			}))
		}
		return o.v
	}

	ds := get("DaemonSet/codeboxd").(*appsv1.DaemonSet)
	pod := ds.Spec.Template.Spec
	if !pod.HostNetwork {
		t.Error("codeboxd must use the host's network: its workers' bridge and firewall are the node's")
	}
	if ds.Spec.Selector == nil || ds.Spec.Selector.MatchLabels["app.kubernetes.io/name"] != ds.Spec.Template.Labels["app.kubernetes.io/name"] {
		t.Error("the DaemonSet's selector does not match its pods")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("codeboxd pod: %d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("codeboxd must be privileged: it makes loop devices, mounts, namespaces and iptables rules on the node")
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m
	}
	hostPaths := map[string]string{}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	for path, propagate := range map[string]bool{"/run/containerd": false, "/var/lib/codeboxd": true, "/dev": false,
		"/run/codebox": true, "/var/lib/cni": false} {
		m, ok := mounts[path]
		switch {
		case !ok:
			t.Errorf("codeboxd does not mount %s", path)
		case hostPaths[m.Name] != path:
			t.Errorf("%s is not the node's %s (volume %s: %q)", path, path, m.Name, hostPaths[m.Name])
		case propagate && (m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationBidirectional):
			t.Errorf("%s must propagate mounts both ways: the node's containerd uses what codeboxd mounts there", path)
		}
	}
	for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.IntValue() != 3874 {
			t.Errorf("codeboxd's %s probe is not GET /healthz on 3874: %+v", name, p)
		}
	}
	if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
		t.Error("codeboxd has no resource requests")
	}
	var token *corev1.EnvVar
	for i, e := range c.Env {
		if e.Name == "AUTH_TOKEN" {
			token = &c.Env[i]
		}
	}
	secret := get("Secret/codebox-token").(*corev1.Secret)
	if token == nil || token.ValueFrom == nil || token.ValueFrom.SecretKeyRef == nil ||
		token.ValueFrom.SecretKeyRef.Name != secret.Name || token.ValueFrom.SecretKeyRef.Key != "AUTH_TOKEN" {
		t.Errorf("AUTH_TOKEN does not come from the Secret: %+v", token)
	}
	// A value shipped in the repository is a value every reader knows.
	for _, name := range []string{"Secret/codebox-token", "Secret/haproxy-stats"} {
		if sec := get(name).(*corev1.Secret); len(sec.Data) > 0 || len(sec.StringData) > 0 {
			t.Errorf("%s ships values", name)
		}
	}
	// With the host's network, codeboxd listens on the node's internal address only.
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		env[e.Name] = e
	}
	if ip := env["NODE_IP"]; ip.ValueFrom == nil || ip.ValueFrom.FieldRef == nil || ip.ValueFrom.FieldRef.FieldPath != "status.hostIP" {
		t.Errorf("NODE_IP is not the node's address: %+v", ip)
	}
	if env["CODEBOX_LISTEN"].Value != "$(NODE_IP):3874" {
		t.Errorf("CODEBOX_LISTEN = %q, want $(NODE_IP):3874", env["CODEBOX_LISTEN"].Value)
	}
	cm := get("ConfigMap/codeboxd").(*corev1.ConfigMap)
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil || c.EnvFrom[0].ConfigMapRef.Name != cm.Name {
		t.Errorf("codeboxd's flags do not come from its ConfigMap: %+v", c.EnvFrom)
	}
	flags := flagNames(t)
	for k := range cm.Data {
		name, ok := strings.CutPrefix(k, "CODEBOX_")
		if !ok || !flags[strings.ReplaceAll(strings.ToLower(name), "_", "-")] {
			t.Errorf("ConfigMap key %s is no flag of codeboxd", k)
		}
	}
	nodes := get("Service/codeboxd-nodes").(*corev1.Service)
	if nodes.Spec.ClusterIP != "None" || nodes.Spec.Selector["app.kubernetes.io/name"] != ds.Spec.Template.Labels["app.kubernetes.io/name"] {
		t.Errorf("codeboxd-nodes must be a headless Service of the DaemonSet's pods: %+v", nodes.Spec)
	}

	dep := get("Deployment/haproxy").(*appsv1.Deployment)
	hp := dep.Spec.Template.Spec
	svc := get("Service/codebox").(*corev1.Service)
	if svc.Spec.Selector["app.kubernetes.io/name"] != dep.Spec.Template.Labels["app.kubernetes.io/name"] {
		t.Error("the codebox Service does not select HAProxy's pods")
	}
	if hp.Containers[0].ReadinessProbe == nil || hp.Containers[0].Resources.Requests.Cpu().IsZero() {
		t.Error("HAProxy has no readiness probe or no resource requests")
	}
	for name, spec := range map[string]corev1.PodSpec{"codeboxd": pod, "haproxy": hp} {
		if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
			t.Errorf("%s's pod mounts a service account token it never uses", name)
		}
	}
	hsc, psc := hp.Containers[0].SecurityContext, hp.SecurityContext
	switch {
	case psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.SeccompProfile == nil ||
		psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault:
		t.Errorf("HAProxy's pod may run as root or without seccomp: %+v", psc)
	case hsc == nil || hsc.AllowPrivilegeEscalation == nil || *hsc.AllowPrivilegeEscalation ||
		hsc.ReadOnlyRootFilesystem == nil || !*hsc.ReadOnlyRootFilesystem || hsc.Capabilities == nil ||
		!slices.Contains(hsc.Capabilities.Drop, "ALL"):
		t.Errorf("HAProxy's container keeps privileges: %+v", hsc)
	}
	if np := get("NetworkPolicy/haproxy").(*networkingv1.NetworkPolicy); np.Spec.PodSelector.MatchLabels["app.kubernetes.io/name"] != dep.Spec.Template.Labels["app.kubernetes.io/name"] {
		t.Error("the haproxy NetworkPolicy does not select HAProxy's pods")
	}
	if deny := get("NetworkPolicy/default-deny-ingress").(*networkingv1.NetworkPolicy); len(deny.Spec.Ingress) != 0 || len(deny.Spec.PodSelector.MatchLabels) != 0 {
		t.Error("default-deny-ingress must select every pod and allow nothing")
	}
	cfg := get("ConfigMap/haproxy").(*corev1.ConfigMap).Data["haproxy.cfg"]
	// maxconn within the container's memory: two buffers a connection and ~16 KiB besides.
	var maxconn, bufsize int64
	fmt.Sscanf(regexp.MustCompile(`maxconn (\d+)`).FindString(cfg), "maxconn %d", &maxconn)
	fmt.Sscanf(regexp.MustCompile(`tune.bufsize (\d+)`).FindString(cfg), "tune.bufsize %d", &bufsize)
	if limit := hp.Containers[0].Resources.Limits.Memory().Value(); maxconn == 0 || bufsize == 0 || maxconn*(2*bufsize+16<<10) > limit*9/10 {
		t.Errorf("HAProxy's maxconn %d with tune.bufsize %d needs more than 90%% of its %d-byte memory limit", maxconn, bufsize, limit)
	}
	if !strings.Contains(cfg, "codeboxd-nodes.codebox.svc.cluster.local:3874") {
		t.Error("HAProxy's servers do not come from the codeboxd-nodes Service")
	}
	// The same routing as the reference configuration.
	ref, err := os.ReadFile("haproxy/haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range routing(string(ref)) {
		if !strings.Contains(cfg, line) {
			t.Errorf("the Kubernetes HAProxy lacks %q of deploy/haproxy/haproxy.cfg", line)
		}
	}
	checkStats(t, "the Kubernetes HAProxy", cfg)
	haproxyCheck(t, cfg)
}

// checkStats: HAProxy's status page is on loopback, behind credentials, without admin
// actions (a cross-origin form POST could put every node into maintenance).
func checkStats(t *testing.T, what, cfg string) {
	t.Helper()
	stats := cfg[strings.Index(cfg, "listen stats"):]
	switch {
	case strings.Contains(cfg, "stats admin"):
		t.Errorf("%s: the status page has admin actions", what)
	case !regexp.MustCompile(`bind 127\.0\.0\.1:\d+`).MatchString(stats):
		t.Errorf("%s: the status page is not on loopback", what)
	case !strings.Contains(stats, `stats auth "${CODEBOX_STATS_USER}:${CODEBOX_STATS_PASSWORD}"`):
		t.Errorf("%s: the status page has no credentials", what)
	case strings.Contains(cfg, "stick on ") || strings.Contains(cfg, "stick store-request"):
		t.Errorf("%s: stick entries come from requests, which anyone can send", what)
	}
}

// routing is the lines that decide where a call goes.
func routing(cfg string) []string {
	var lines []string
	for _, l := range strings.Split(cfg, "\n") {
		l = strings.TrimSpace(l)
		for _, p := range []string{"balance ", "hash-type ", "stick ", "http-request set-var", "option httpchk", "default-server "} {
			if strings.HasPrefix(l, p) {
				lines = append(lines, l)
			}
		}
	}
	return lines
}

// haproxyCheck has HAProxy itself check a configuration.
func haproxyCheck(t *testing.T, cfg string) {
	t.Helper()
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Fatalf("haproxy is not installed (make deps installs it): %v", err)
	}
	f := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(f, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("haproxy", "-c", "-f", f)
	cmd.Env = append(os.Environ(), "CODEBOX_STATS_USER=ops", "CODEBOX_STATS_PASSWORD=check")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("haproxy -c: %v\n%s", err, out)
	}
	// Without the credentials it refuses to start.
	bare := exec.Command("haproxy", "-c", "-f", f)
	bare.Env = []string{"PATH=" + os.Getenv("PATH")}
	if out, err := bare.CombinedOutput(); err == nil || !strings.Contains(string(out), "CODEBOX_STATS_PASSWORD") {
		t.Fatalf("haproxy -c without the status page's credentials: %v\n%s", err, out)
	}
}

// flagNames lists codeboxd's flags, from where they are defined.
func flagNames(t *testing.T) map[string]bool {
	t.Helper()
	src, err := os.ReadFile("../cmd/codeboxd/config.go")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, m := range regexp.MustCompile(`fs\.\w+Var\(&c\.\w+, "([a-z0-9-]+)"`).FindAllStringSubmatch(string(src), -1) {
		names[m[1]] = true
	}
	if len(names) < 10 {
		t.Fatalf("found %d flags in cmd/codeboxd/config.go", len(names))
	}
	return names
}

// TestHAProxyReference keeps deploy/haproxy/haproxy.cfg what scripts/haproxy-config.sh
// makes of deploy/haproxy/nodes.example, and valid.
func TestHAProxyReference(t *testing.T) {
	out, err := exec.Command("../scripts/haproxy-config.sh", "haproxy/nodes.example").Output()
	if err != nil {
		t.Fatalf("haproxy-config.sh: %v", err)
	}
	ref, err := os.ReadFile("haproxy/haproxy.cfg")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, ref) {
		t.Fatal("deploy/haproxy/haproxy.cfg is not the generator's output: scripts/haproxy-config.sh deploy/haproxy/nodes.example > deploy/haproxy/haproxy.cfg")
	}
	if n := strings.Count(string(ref), "\n    server "); n != 3 {
		t.Errorf("%d servers, want the example's 3", n)
	}
	checkStats(t, "deploy/haproxy/haproxy.cfg", string(ref))
	haproxyCheck(t, string(ref))
	// With TLS both ways, still valid for HAProxy (it loads the files: real ones).
	dir := t.TempDir()
	pem, ca := writeTestCert(t, dir)
	tlsCmd := exec.Command("../scripts/haproxy-config.sh", "haproxy/nodes.example")
	tlsCmd.Env = append(os.Environ(), "CODEBOX_TLS_PEM="+pem, "CODEBOX_NODE_CA="+ca)
	tlsCfg, err := tlsCmd.Output()
	if err != nil {
		t.Fatalf("haproxy-config.sh with TLS: %v", err)
	}
	if !strings.Contains(string(tlsCfg), "ssl crt "+pem) || !strings.Contains(string(tlsCfg), "ssl verify required ca-file "+ca) {
		t.Fatalf("TLS not configured:\n%s", tlsCfg)
	}
	haproxyCheck(t, string(tlsCfg))
	bad := filepath.Join(t.TempDir(), "nodes")
	os.WriteFile(bad, []byte("node-a 10.0.0.1:3874 extra\n"), 0o644)
	if err := exec.Command("../scripts/haproxy-config.sh", bad).Run(); err == nil {
		t.Error("a malformed node line was accepted")
	}
}

// writeTestCert writes a self-signed certificate with its key (one PEM, as HAProxy's crt
// takes it) and the same certificate as a CA file.
func writeTestCert(t *testing.T, dir string) (pemFile, caFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "codebox-test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), DNSNames: []string{"localhost"},
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	pemFile, caFile = filepath.Join(dir, "server.pem"), filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(pemFile, append(certPEM, keyPEM...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile, certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	return pemFile, caFile
}
