// Command kvstore serves the deterministic example key-value store.
package main

import (
	"flag"
	"fmt"
	"net/http"
	"os"

	"github.com/smr-io/smr-cri/examples/kvstore"
)

func main() {
	addr := flag.String("listen", ":8080", "address to serve HTTP on")
	flag.Parse()
	fmt.Fprintf(os.Stderr, "kvstore listening on %s\n", *addr)
	if err := http.ListenAndServe(*addr, kvstore.New()); err != nil {
		fmt.Fprintln(os.Stderr, "kvstore:", err)
		os.Exit(1)
	}
}
