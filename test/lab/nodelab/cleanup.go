package nodelab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/smr-io/smr-cri/test/lab/procfs"
)

// Slots give concurrent labs distinct bridges and pod subnets: slot n owns bridge "smrlab<n>"
// and subnet 198.19.<n>.0/24. Lower 198.19.x subnets are left to multi-node setups.
const (
	slotFirst = 160
	slotLast  = 254
)

// SlotDir records which lab directory holds which slot (one directory per claimed slot).
var SlotDir = "/run/smr-nodelab/slots"

func bridgeName(slot int) string { return "smrlab" + strconv.Itoa(slot) }
func slotSubnet(slot int) string { return fmt.Sprintf("198.19.%d.0/24", slot) }

func gatewayOf(subnet string) (string, error) {
	p, err := netip.ParsePrefix(subnet)
	if err != nil {
		return "", fmt.Errorf("nodelab: subnet %q: %w", subnet, err)
	}
	return p.Masked().Addr().Next().String(), nil
}

// claimSlot takes the lowest free slot atomically (mkdir) and records dir in it.
func claimSlot(dir string) (int, error) {
	if err := os.MkdirAll(SlotDir, 0o755); err != nil {
		return 0, fmt.Errorf("nodelab: %w", err)
	}
	for n := slotFirst; n <= slotLast; n++ {
		p := filepath.Join(SlotDir, strconv.Itoa(n))
		if err := os.Mkdir(p, 0o755); err != nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(p, "dir"), []byte(dir), 0o644); err != nil {
			os.RemoveAll(p)
			return 0, fmt.Errorf("nodelab: claim slot %d: %w", n, err)
		}
		return n, nil
	}
	return 0, fmt.Errorf("nodelab: all %d lab slots in %s are taken", slotLast-slotFirst+1, SlotDir)
}

// releaseSlot frees slot n if it is held by dir.
func releaseSlot(n int, dir string) {
	p := filepath.Join(SlotDir, strconv.Itoa(n))
	if b, err := os.ReadFile(filepath.Join(p, "dir")); err == nil && string(b) == dir {
		os.RemoveAll(p)
	}
}

// SweepStale stops labs whose owner process is gone (a test binary killed by its timeout never
// runs its cleanups), frees slots whose directory no longer exists, deletes the network
// namespaces, mounts and /var/log/containers links of lab kubelets whose owner is gone.
func SweepStale(ctx context.Context, log io.Writer) error {
	errs := sweepKubelets(ctx)
	entries, err := os.ReadDir(SlotDir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errors.Join(errs...)
		}
		return fmt.Errorf("nodelab: %w", err)
	}
	for _, e := range entries {
		p := filepath.Join(SlotDir, e.Name())
		b, err := os.ReadFile(filepath.Join(p, "dir"))
		if err != nil {
			// A claim in progress writes its dir right after mkdir; only old empty claims are stale.
			if fi, serr := os.Stat(p); serr == nil && time.Since(fi.ModTime()) > time.Minute {
				os.RemoveAll(p)
			}
			continue
		}
		dir := string(b)
		st, err := readLabState(dir)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				os.RemoveAll(p)
			}
			continue
		}
		if st.Owner == 0 || procfs.Alive(st.Owner) {
			continue
		}
		if log != nil {
			fmt.Fprintf(log, "nodelab: lab %s: owner pid %d is gone, stopping it\n", dir, st.Owner)
		}
		if err := StopContainerd(ctx, dir, log); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// StopContainerd tears down the lab in dir, whichever process started it: it stops and removes
// every pod through CRI (so CNI releases addresses, portmap rules and network namespaces), stops
// containerd, kills what is left of its containers and shims, unmounts everything under dir,
// deletes the CNI bridge and frees the slot. It is idempotent. Files stay in dir (logs).
func StopContainerd(ctx context.Context, dir string, log io.Writer) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return fmt.Errorf("nodelab: %w", err)
	}
	logf := func(format string, args ...any) {
		if log != nil {
			fmt.Fprintf(log, "nodelab: "+format+"\n", args...)
		}
	}
	st, stErr := readLabState(dir)
	if stErr != nil && !errors.Is(stErr, os.ErrNotExist) {
		return stErr
	}
	var errs []error
	sock := socketPath(dir)
	if procfs.Alive(st.PID) && isOurContainerd(st.PID, dir) {
		if err := removeAllPods(ctx, sock); err != nil {
			logf("removing pods through CRI: %v (continuing with forced cleanup)", err)
		}
		if err := Terminate(st.PID, 15*time.Second); err != nil {
			errs = append(errs, fmt.Errorf("stop containerd pid %d: %w", st.PID, err))
		}
	}
	// Containers that survived (containerd crashed or RemovePodSandbox failed).
	if err := killContainers(ctx, filepath.Join(dir, "runc")); err != nil {
		errs = append(errs, err)
	}
	for _, pid := range shimPIDs(sock) {
		logf("killing leftover shim pid %d", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	if err := removeTaskLeftovers(dir); err != nil {
		errs = append(errs, err)
	}
	if err := unmountUnder(dir); err != nil {
		errs = append(errs, err)
	}
	// A bridge inside another network namespace goes away with that namespace.
	if st.Bridge != "" && st.NetNS == "" {
		if l, err := netlink.LinkByName(st.Bridge); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("delete bridge %s: %w", st.Bridge, err))
			}
		}
	}
	if st.Slot != 0 {
		releaseSlot(st.Slot, dir)
		if err := cleanPortmapChains(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	os.Remove(sock)
	if stErr == nil {
		st.PID = 0
		_ = writeLabState(dir, st)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("nodelab: stop lab %s: %w", dir, err)
	}
	return nil
}

// isOurContainerd guards against pid reuse: the process must be containerd with dir's config.
func isOurContainerd(pid int, dir string) bool {
	p, err := procfs.Read(pid)
	return err == nil && slices.Contains(p.Args, filepath.Join(dir, "config.toml"))
}

// RemoveAllPods stops and removes every pod sandbox (and its containers) through the CRI socket
// sock, which may be containerd's or a proxy's such as smr-cri (whose teardown hooks then run).
func RemoveAllPods(ctx context.Context, sock string) error { return removeAllPods(ctx, sock) }

// removeAllPods stops and removes every pod sandbox (and with it its containers) through CRI.
func removeAllPods(ctx context.Context, sock string) error {
	conn, err := dialCRI(sock)
	if err != nil {
		return err
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	resp, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range resp.GetItems() {
		if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stop pod %s: %w", p.Id, err))
		}
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
			errs = append(errs, fmt.Errorf("remove pod %s: %w", p.Id, err))
		}
	}
	return errors.Join(errs...)
}

// Terminate sends pid SIGTERM, waits up to grace, then SIGKILL, and waits until it is gone.
func Terminate(pid int, grace time.Duration) error { return TerminateAll([]int{pid}, grace, nil) }

// TerminateAll stops the processes pids together: SIGTERM to each, a wait of up to grace for
// all of them, then SIGKILL to the survivors (after beforeKill, if set, is called with their
// pids), and a wait until they are gone. A pid that cannot be signalled (other than already
// gone) is reported and not waited for.
func TerminateAll(pids []int, grace time.Duration, beforeKill func(survivors []int)) error {
	var errs []error
	var waiting []int
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, err)
			continue
		}
		waiting = append(waiting, pid)
	}
	alive := func() []int {
		var left []int
		for _, pid := range waiting {
			if procfs.Alive(pid) {
				left = append(left, pid)
			}
		}
		return left
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && len(alive()) > 0 {
		time.Sleep(100 * time.Millisecond)
	}
	if left := alive(); len(left) > 0 {
		if beforeKill != nil {
			beforeKill(left)
		}
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		for i := 0; i < 50 && len(alive()) > 0; i++ {
			time.Sleep(100 * time.Millisecond)
		}
		for _, pid := range alive() {
			errs = append(errs, fmt.Errorf("pid %d survived SIGKILL", pid))
		}
	}
	return errors.Join(errs...)
}

// killContainers force-deletes every container in the runc roots under runcDir (one per
// containerd namespace).
func killContainers(ctx context.Context, runcDir string) error {
	roots, _ := os.ReadDir(runcDir)
	var errs []error
	for _, r := range roots {
		root := filepath.Join(runcDir, r.Name())
		ids, _ := os.ReadDir(root)
		for _, id := range ids {
			if !id.IsDir() {
				continue
			}
			out, err := exec.CommandContext(ctx, "runc", "--root", root, "delete", "--force", id.Name()).CombinedOutput()
			if err != nil && !strings.Contains(string(out), "does not exist") {
				errs = append(errs, fmt.Errorf("runc delete --force %s: %w: %s", id.Name(), err, strings.TrimSpace(string(out))))
			}
		}
	}
	return errors.Join(errs...)
}

// shimPIDs finds containerd-shim processes serving the containerd at sock.
func shimPIDs(sock string) []int {
	var pids []int
	for _, p := range procfs.List() {
		if len(p.Args) == 0 || !strings.Contains(filepath.Base(p.Args[0]), "containerd-shim") {
			continue
		}
		for i := 0; i+1 < len(p.Args); i++ {
			if p.Args[i] == "-address" && p.Args[i+1] == sock {
				pids = append(pids, p.PID)
			}
		}
	}
	return pids
}

// MountsUnder lists mount points at or below dir, deepest first.
func MountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	return mounts, sc.Err()
}

// unescapeMount decodes mountinfo's octal escapes (\040 for space and so on).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// UnmountUnder unmounts everything at or below dir, deepest first (lazily if busy).
func UnmountUnder(dir string) error { return unmountUnder(dir) }

// unmountUnder unmounts everything below dir (lazily if busy) until nothing is left.
func unmountUnder(dir string) error {
	for pass := 0; pass < 5; pass++ {
		mounts, err := MountsUnder(dir)
		if err != nil {
			return fmt.Errorf("read mounts: %w", err)
		}
		if len(mounts) == 0 {
			return nil
		}
		for _, m := range mounts {
			if err := unix.Unmount(m, 0); err != nil {
				_ = unix.Unmount(m, unix.MNT_DETACH)
			}
		}
	}
	mounts, _ := MountsUnder(dir)
	if len(mounts) > 0 {
		return fmt.Errorf("mounts left under %s: %v", dir, mounts)
	}
	return nil
}

// cleanPortmapChains removes the host-wide chains the CNI portmap plugin creates, once no lab
// holds a slot any more (they are shared by every lab on the machine).
func cleanPortmapChains(ctx context.Context) error {
	if entries, err := os.ReadDir(SlotDir); err == nil && len(entries) > 0 {
		return nil
	}
	ipt, err := exec.LookPath("iptables")
	if err != nil {
		return nil
	}
	out, err := exec.CommandContext(ctx, ipt, "-w", "-t", "nat", "-S").Output()
	if err != nil {
		return fmt.Errorf("iptables -t nat -S: %w", err)
	}
	var chains []string
	for _, line := range strings.Split(string(out), "\n") {
		f := splitRule(line)
		switch {
		case len(f) >= 2 && f[0] == "-N" && isPortmapChain(f[1]):
			chains = append(chains, f[1])
		case len(f) >= 4 && f[0] == "-A" && !isPortmapChain(f[1]) && jumpsToPortmap(f):
			// A jump from a built-in chain (PREROUTING, OUTPUT, POSTROUTING) into a CNI chain.
			args := append([]string{"-w", "-t", "nat", "-D"}, f[1:]...)
			if b, err := exec.CommandContext(ctx, ipt, args...).CombinedOutput(); err != nil {
				return fmt.Errorf("iptables %s: %w: %s", strings.Join(args, " "), err, b)
			}
		}
	}
	for _, verb := range []string{"-F", "-X"} {
		for _, c := range chains {
			if b, err := exec.CommandContext(ctx, ipt, "-w", "-t", "nat", verb, c).CombinedOutput(); err != nil {
				return fmt.Errorf("iptables -t nat %s %s: %w: %s", verb, c, err, b)
			}
		}
	}
	return nil
}

func isPortmapChain(c string) bool {
	return strings.HasPrefix(c, "CNI-HOSTPORT-") || strings.HasPrefix(c, "CNI-DN-")
}

func jumpsToPortmap(f []string) bool {
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "-j" && isPortmapChain(f[i+1]) {
			return true
		}
	}
	return false
}

// splitRule splits a line of `iptables -S` into arguments, honouring double quotes (comments).
func splitRule(line string) []string {
	var args []string
	var cur strings.Builder
	inQuote, have := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\' && inQuote && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			inQuote, have = !inQuote, true
		case c == ' ' && !inQuote:
			if have {
				args = append(args, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if have {
		args = append(args, cur.String())
	}
	return args
}
