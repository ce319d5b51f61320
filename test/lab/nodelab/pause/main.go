// Command pause is the sandbox ("pause") image of the node lab: it holds a pod's namespaces open
// and does nothing else until SIGTERM or SIGINT. It is built statically (CGO_ENABLED=0) so the image
// needs no libraries; nodelab.BuildImages puts it into localhost/pause:smr.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
