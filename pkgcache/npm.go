package pkgcache

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"strings"
)

// The npm side: GET /npm/<name> (a scoped name as @scope/name or @scope%2fname) is the
// upstream registry's document for the package, with only the versions whose tarball has a
// sha512 integrity (and that the allowlist lets through), each tarball pointing at
// /npm/-/files/<sha512 hex>/<file> here; GET of that serves it from the store or fetches
// it, checked, from where the document said.

var (
	npmName   = regexp.MustCompile(`^(@[a-zA-Z0-9-~][a-zA-Z0-9-._~]*/)?[a-zA-Z0-9-~][a-zA-Z0-9-._~]*$`)
	sha512Hex = regexp.MustCompile(`^[0-9a-f]{128}$`)
)

const npmInstallForm = "application/vnd.npm.install-v1+json"

func (c *Cache) serveNPM(w http.ResponseWriter, r *http.Request) *Refusal {
	rest := strings.TrimPrefix(r.URL.Path, "/npm/")
	if f, ok := strings.CutPrefix(rest, "-/files/"); ok {
		h, filename, _ := strings.Cut(f, "/")
		if !sha512Hex.MatchString(h) || filename == "" {
			return &Refusal{Reason: ReasonNotFound, Detail: "not a file of this cache"}
		}
		return c.serveFile(w, r, "npm", "sha512", h, "application/octet-stream")
	}
	name := rest
	if len(name) > 214 || !npmName.MatchString(name) {
		return &Refusal{Reason: ReasonNotFound, Detail: fmt.Sprintf("%q is not a package of this registry (the cache serves package documents and their tarballs)", echo(name))}
	}
	if c.cfg.Allowlist != nil && !c.cfg.Allowlist.allowsName("npm", name) {
		return &Refusal{Reason: ReasonNotAllowed, Package: name, Detail: fmt.Sprintf("%s is not in this host's package allowlist", name)}
	}
	accept := "application/json"
	if strings.Contains(r.Header.Get("Accept"), npmInstallForm) {
		accept = npmInstallForm + "; q=1.0, application/json; q=0.8"
	}
	base := c.cfg.BaseURL
	key := "npm\x00" + name + "\x00" + accept
	if p, ok := c.cachedIndex(key); ok {
		servePage(w, r, p)
		return nil
	}
	// A scoped name's slash goes as %2f, as the registries expect.
	ref, err := url.Parse(strings.Replace(name, "/", "%2f", 1))
	if err != nil {
		return &Refusal{Reason: ReasonNotFound, Detail: fmt.Sprintf("%q is not a package name", echo(name))}
	}
	src := c.cfg.NPM.ResolveReference(ref)
	body, contentType, err := c.getIndex(r.Context(), src.String(), accept)
	if errors.Is(err, errNotFound) {
		return &Refusal{Reason: ReasonNotFound, Package: name, Detail: fmt.Sprintf("no package %s at the upstream registry", name)}
	}
	if err != nil {
		return c.upstreamFailed(name, "the document", err)
	}
	done, err := c.rewriting(r.Context())
	if err != nil {
		return &Refusal{Reason: ReasonUpstream, Package: name, Detail: err.Error()}
	}
	out, files, err := c.rewritePackument(body, name, base)
	done()
	if err != nil {
		return c.upstreamFailed(name, "the document", err)
	}
	c.learn(files)
	if !strings.HasPrefix(contentType, npmInstallForm) {
		contentType = "application/json"
	}
	p := page{body: out, contentType: contentType}
	c.keepIndex(key, p)
	servePage(w, r, p)
	return nil
}

// rewritePackument keeps the versions whose tarball can be checked (a sha512 integrity)
// and that the allowlist lets through, each pointing at this cache, and the dist-tags that
// still name a kept version.
func (c *Cache) rewritePackument(body []byte, name, base string) ([]byte, map[string]origin, error) {
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, nil, fmt.Errorf("not JSON: %w", err)
	}
	var versions map[string]map[string]json.RawMessage
	if err := json.Unmarshal(doc["versions"], &versions); err != nil {
		return nil, nil, fmt.Errorf("its versions: %w", err)
	}
	files := map[string]origin{}
	for v, meta := range versions {
		var dist map[string]json.RawMessage
		var tarball, integrity string
		if json.Unmarshal(meta["dist"], &dist) != nil || json.Unmarshal(dist["tarball"], &tarball) != nil {
			delete(versions, v)
			continue
		}
		json.Unmarshal(dist["integrity"], &integrity)
		h := sha512Of(integrity)
		u, err := url.Parse(tarball)
		if h == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") ||
			(c.cfg.Allowlist != nil && !c.cfg.Allowlist.allowsVersion("npm", name, v)) {
			delete(versions, v)
			continue
		}
		file := path.Base(u.Path)
		files[h] = origin{url: tarball, eco: "npm", pkg: name, filename: file, version: v}
		dist["tarball"], _ = json.Marshal(fmt.Sprintf("%s/npm/-/files/%s/%s", base, h, url.PathEscape(file)))
		meta["dist"], _ = json.Marshal(dist)
	}
	var err error
	if doc["versions"], err = json.Marshal(versions); err != nil {
		return nil, nil, err
	}
	var tags map[string]string
	if json.Unmarshal(doc["dist-tags"], &tags) == nil {
		for t, v := range tags {
			if _, ok := versions[v]; !ok {
				delete(tags, t)
			}
		}
		doc["dist-tags"], _ = json.Marshal(tags)
	}
	out, err := json.Marshal(doc)
	return out, files, err
}

// sha512Of is the hex of an integrity string's sha512 ("sha512-<base64>", among others).
func sha512Of(integrity string) string {
	for _, f := range strings.Fields(integrity) {
		if b64, ok := strings.CutPrefix(f, "sha512-"); ok {
			b, err := base64.StdEncoding.DecodeString(b64)
			if err == nil && len(b) == 64 {
				return hex.EncodeToString(b)
			}
		}
	}
	return ""
}
