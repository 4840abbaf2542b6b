package main

import (
	"crypto/tls"
	"fmt"
	"sync/atomic"
)

// certificate is the API's TLS certificate, read from --tls-cert and --tls-key at start and
// again on SIGHUP (a renewed certificate is taken without a restart; a broken one is
// refused and the one in use kept).
type certificate struct {
	certFile, keyFile string
	current           atomic.Pointer[tls.Certificate]
}

func loadCertificate(certFile, keyFile string) (*certificate, error) {
	c := &certificate{certFile: certFile, keyFile: keyFile}
	if err := c.reload(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *certificate) reload() error {
	kp, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("--tls-cert %s / --tls-key %s: %w", c.certFile, c.keyFile, err)
	}
	c.current.Store(&kp)
	return nil
}

// config is the server's TLS configuration.
func (c *certificate) config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.current.Load(), nil
		},
	}
}
