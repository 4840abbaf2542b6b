// Package deploy holds no code: its directories are the deployment references (HAProxy
// in front of several codeboxd nodes, Kubernetes manifests), and its tests check them.
package deploy
