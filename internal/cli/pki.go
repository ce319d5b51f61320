package cli

import (
	"context"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/smr-io/smr-cri/internal/exitcode"
	"github.com/smr-io/smr-cri/internal/pki"
)

const pkiHelp = `Usage: smr-cri pki <init|issue> [flags]

Manages the cluster CA that signs the member certificates ordering nodes use
for mutual TLS (see docs/security.md). On Kubernetes the node daemon keeps
the CA in the Secret smr-system/smr-cri-ca and creates it when missing, so
no manual step is needed; these commands are for the local test cluster and
for nodes without API access.

  init  --dir DIR           create the CA in DIR (ca.crt, ca.key 0600) unless
                            one is there; print its SHA-256 fingerprint
  issue --dir DIR --group G --member N --out OUT [--validity 24h]
                            issue a member certificate (OUT/tls.crt,
                            OUT/tls.key 0600) for member N of group G
`

func runPKI(_ context.Context, args []string, stdout, _ io.Writer) error {
	usage := func(w io.Writer) { fmt.Fprint(w, pkiHelp) }
	if len(args) == 0 {
		return &exitcode.UsageError{Err: errors.New("pki: missing action (init or issue)"), Usage: usage}
	}
	switch args[0] {
	case "-h", "-help", "--help":
		usage(stdout)
		return flag.ErrHelp
	}
	fs := flag.NewFlagSet("pki "+args[0], flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dir := fs.String("dir", "", "directory of the cluster CA")
	group := fs.String("group", "", "group name (issue)")
	member := fs.Uint64("member", 0, "member id (issue)")
	out := fs.String("out", "", "output directory (issue)")
	validity := fs.Duration("validity", pki.DefaultMemberValidity, "certificate lifetime (issue)")
	if err := fs.Parse(args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			usage(stdout)
			return err
		}
		return &exitcode.UsageError{Err: fmt.Errorf("pki %s: %w", args[0], err), Usage: usage}
	}
	if fs.NArg() > 0 {
		return &exitcode.UsageError{Err: fmt.Errorf("pki %s: unexpected arguments %q", args[0], fs.Args()), Usage: usage}
	}
	if *dir == "" {
		return &exitcode.UsageError{Err: fmt.Errorf("pki %s: --dir is required", args[0]), Usage: usage}
	}
	switch args[0] {
	case "init":
		ca, created, err := pki.EnsureCADir(*dir)
		if err != nil {
			return err
		}
		verb := "existing"
		if created {
			verb = "created"
		}
		fmt.Fprintf(stdout, "%s cluster CA in %s (sha256 %x, expires %s)\n", verb, *dir, sha256.Sum256(ca.Cert.Raw), ca.Cert.NotAfter.UTC().Format(time.RFC3339))
		return nil
	case "issue":
		if *group == "" || *member == 0 || *out == "" {
			return &exitcode.UsageError{Err: errors.New("pki issue: --group, --member (> 0) and --out are required"), Usage: usage}
		}
		if *validity <= 0 {
			return &exitcode.UsageError{Err: fmt.Errorf("pki issue: --validity must be positive, got %v", *validity), Usage: usage}
		}
		ca, err := pki.LoadCA(*dir)
		if err != nil {
			return err
		}
		now := time.Now()
		c, err := ca.Issue([]pki.Identity{{Group: *group, Member: *member}}, pki.IssueOptions{NotBefore: now.Add(-time.Minute), NotAfter: now.Add(*validity)})
		if err != nil {
			return err
		}
		certPEM, keyPEM, err := pki.EncodeCert(c)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(*out, 0o700); err != nil {
			return fmt.Errorf("pki issue: %w", err)
		}
		if err := os.WriteFile(filepath.Join(*out, "tls.key"), keyPEM, 0o600); err != nil {
			return fmt.Errorf("pki issue: %w", err)
		}
		if err := os.WriteFile(filepath.Join(*out, "tls.crt"), certPEM, 0o644); err != nil {
			return fmt.Errorf("pki issue: %w", err)
		}
		fmt.Fprintf(stdout, "issued %s for group %s member %d, expires %s\n", filepath.Join(*out, "tls.crt"), *group, *member, c.Leaf.NotAfter.UTC().Format(time.RFC3339))
		return nil
	default:
		return &exitcode.UsageError{Err: fmt.Errorf("pki: unknown action %q (want init or issue)", args[0]), Usage: usage}
	}
}
