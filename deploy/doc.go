// Package deploy holds no code: its tests check the deployment recipes
// beside it (systemd units, Kubernetes manifests, the Dockerfile) against
// the upstream API types, systemd-analyze and the supervisor's own config
// loader. It is a module of its own so that the main module does not
// depend on Kubernetes' packages.
package deploy
