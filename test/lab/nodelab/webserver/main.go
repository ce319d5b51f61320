// Command webserver stands in for the nginx and httpd test images that critest uses
// (registry.k8s.io/e2e-test-images/nginx:1.14-2 and httpd:2.4.39-4): it serves a static page on
// the given port (80 by default) and writes its pid to /var/run/nginx.pid like nginx does, which
// critest's namespace specs read. It is built statically and installed as /usr/sbin/nginx so that
// `pidof nginx` finds it, and it re-executes itself with nginx's process title ("nginx: master
// process ...") as argv[0], which critest's PID namespace specs look for in /proc/1/cmdline.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
)

const masterTitle = ": master process "

const page = "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head>\n" +
	"<body><h1>Welcome to nginx!</h1><p>smr-cri node lab web server</p></body></html>\n"

func main() {
	port := flag.Int("port", 80, "TCP port to listen on (all addresses)")
	name := flag.String("name", "nginx", "server name in log lines (critest looks for \"httpd\" in the httpd image's log)")
	pidFile := flag.String("pid-file", "/var/run/nginx.pid", "where to write the process id (empty: do not write)")
	flag.Parse()
	if !strings.Contains(os.Args[0], masterTitle) {
		title := *name + masterTitle + *name + " -g daemon off;"
		err := syscall.Exec("/proc/self/exe", append([]string{title}, os.Args[1:]...), os.Environ())
		log.Printf("%s: re-exec with process title: %v (continuing without)", *name, err)
	}
	if *port <= 0 || *port > 65535 {
		log.Fatalf("webserver: invalid --port %d (want 1-65535)", *port)
	}
	if *pidFile != "" {
		// Best effort: a read-only root filesystem must not stop the server.
		if err := os.WriteFile(*pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
			log.Printf("webserver: %v", err)
		}
	}
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		fmt.Fprint(w, page)
	})
	addr := ":" + strconv.Itoa(*port)
	log.Printf("%s: listening on %s", *name, addr)
	log.Fatal(http.ListenAndServe(addr, nil))
}
