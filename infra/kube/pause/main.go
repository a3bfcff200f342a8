// Command pause holds a pod's namespaces for the real node's containerd (`edgeloop kube up --real-node`),
// as registry.k8s.io/pause does: it sleeps until SIGTERM or SIGINT and, as PID 1 of a pod that shares its
// process namespace, reaps the orphans re-parented to it. Built locally because no registry is reachable.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
