package netintercept

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// Backend is an iptables implementation.
type Backend string

const (
	BackendNFT    Backend = "nf_tables"
	BackendLegacy Backend = "legacy"
)

// ErrNoBackend is wrapped when neither iptables backend can be run in a namespace.
var ErrNoBackend = errors.New("no iptables backend available")

func (b Backend) saveCmd() string {
	if b == BackendLegacy {
		return "iptables-legacy-save"
	}
	return "iptables-nft-save"
}

func (b Backend) restoreCmd() []string {
	if b == BackendLegacy {
		// Legacy tables are swapped whole; wait for the xtables lock instead of failing.
		return []string{"iptables-legacy-restore", "--noflush", "--wait=10"}
	}
	return []string{"iptables-nft-restore", "--noflush"}
}

// Result says what Apply or Cleanup did.
type Result struct {
	Backend Backend
	Changed bool   // false: the namespace already was as wanted and nothing ran
	Script  string // the iptables-restore transaction that ran, if any
}

// Interceptor applies and removes a pod's interception rules inside its network namespace.
// The zero value runs the real commands.
type Interceptor struct {
	Exec   CmdRunner    // nil: NetnsRunner
	Tables TableRemover // nil with a nil Exec: NFTables; nil otherwise: empty tables are kept

	// mu serializes read-plan-restore sequences of this process, so that two of them never
	// plan from the same state; iptables-restore itself is atomic against everyone else.
	mu sync.Mutex
}

func (ic *Interceptor) exec() CmdRunner {
	if ic.Exec == nil {
		return NetnsRunner{}
	}
	return ic.Exec
}

func (ic *Interceptor) tables() TableRemover {
	if ic.Tables == nil && ic.Exec == nil {
		return NFTables{}
	}
	return ic.Tables
}

// Detect returns the backend to use in the namespace and its current iptables-save output. The
// backend whose save shows rules or user chains wins (the namespace's owner chose it); when
// neither or both do, nf_tables is preferred, as iptables 1.8 defaults to it.
func (ic *Interceptor) Detect(ctx context.Context, netnsPath string) (Backend, string, error) {
	if err := CheckNetnsPath(netnsPath); err != nil {
		return "", "", err
	}
	type found struct {
		save string
		err  error
	}
	res := map[Backend]found{}
	for _, b := range []Backend{BackendNFT, BackendLegacy} {
		out, err := ic.exec().Run(ctx, Cmd{Netns: netnsPath, Name: b.saveCmd()})
		res[b] = found{string(out), err}
	}
	nft, legacy := res[BackendNFT], res[BackendLegacy]
	switch {
	case nft.err != nil && legacy.err != nil:
		return "", "", fmt.Errorf("%w in netns %q: %w", ErrNoBackend, netnsPath, errors.Join(nft.err, legacy.err))
	case nft.err != nil:
		return BackendLegacy, legacy.save, nil
	case legacy.err != nil:
		return BackendNFT, nft.save, nil
	case saveContent(legacy.save) > saveContent(nft.save):
		return BackendLegacy, legacy.save, nil
	default:
		return BackendNFT, nft.save, nil
	}
}

// Apply makes the namespace at netnsPath intercept as spec says. It is idempotent (nothing
// runs when the rules are already in place) and atomic (one iptables-restore transaction).
func (ic *Interceptor) Apply(ctx context.Context, netnsPath string, spec Spec) (Result, error) {
	rs, err := Build(spec)
	if err != nil {
		return Result{}, err
	}
	ic.mu.Lock()
	defer ic.mu.Unlock()
	backend, save, err := ic.Detect(ctx, netnsPath)
	if err != nil {
		return Result{}, fmt.Errorf("apply interception: %w", err)
	}
	script, changed := planApply(rs, table(parseSave(save), rs.Table))
	res := Result{Backend: backend, Changed: changed, Script: script}
	if !changed {
		return res, nil
	}
	if err := ic.restore(ctx, netnsPath, backend, script); err != nil {
		return Result{}, fmt.Errorf("apply interception: %w", err)
	}
	return res, nil
}

// Cleanup removes every jump to an smr-cri chain and every smr-cri chain from the namespace, in
// one transaction. With nf_tables, when the nat table holds nothing but ours, the table itself
// is deleted instead (guarded by the ruleset generation read before looking at it), so
// iptables-save prints what it printed before Apply created the table.
func (ic *Interceptor) Cleanup(ctx context.Context, netnsPath string) (Result, error) {
	if err := CheckNetnsPath(netnsPath); err != nil {
		return Result{}, fmt.Errorf("clean up interception: %w", err)
	}
	ic.mu.Lock()
	defer ic.mu.Unlock()
	// Read before the table is inspected: any change after this point makes the delete fail.
	gen, genErr := uint32(0), errors.New("no table remover")
	if tr := ic.tables(); tr != nil {
		gen, genErr = tr.Generation(ctx, netnsPath)
	}
	res, cur, err := ic.planCleanup(ctx, netnsPath)
	if err != nil || !res.Changed {
		return res, err
	}
	if res.Backend == BackendNFT && genErr == nil && cur.withoutOwned().pristine() {
		err := ic.tables().DeleteTable(ctx, netnsPath, unix.NFPROTO_IPV4, natTable, gen)
		if err == nil {
			res.Script = fmt.Sprintf("# nf_tables: delete table ip %s at generation %d\n", natTable, gen)
			return res, nil
		}
		if !errors.Is(err, ErrGenerationChanged) {
			return Result{}, fmt.Errorf("clean up interception: %w", err)
		}
		// Someone else changed the ruleset meanwhile: remove only ours, from a fresh read.
		if res, _, err = ic.planCleanup(ctx, netnsPath); err != nil || !res.Changed {
			return res, err
		}
	}
	if err := ic.restore(ctx, netnsPath, res.Backend, res.Script); err != nil {
		return Result{}, fmt.Errorf("clean up interception: %w", err)
	}
	return res, nil
}

// planCleanup reads the namespace and plans the removal of everything of ours.
func (ic *Interceptor) planCleanup(ctx context.Context, netnsPath string) (Result, *tableState, error) {
	backend, save, err := ic.Detect(ctx, netnsPath)
	if err != nil {
		return Result{}, nil, fmt.Errorf("clean up interception: %w", err)
	}
	cur := table(parseSave(save), natTable)
	script, changed := planCleanup(natTable, cur)
	return Result{Backend: backend, Changed: changed, Script: script}, cur, nil
}

func (ic *Interceptor) restore(ctx context.Context, netnsPath string, b Backend, script string) error {
	argv := b.restoreCmd()
	if _, err := ic.exec().Run(ctx, Cmd{Netns: netnsPath, Name: argv[0], Args: argv[1:], Stdin: []byte(script)}); err != nil {
		return fmt.Errorf("%s backend restore of\n%s: %w", b, script, err)
	}
	return nil
}
