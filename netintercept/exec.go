package netintercept

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// Cmd is one command to run inside a network namespace.
type Cmd struct {
	Netns string // path of the network namespace to run in
	Name  string // program, looked up in PATH
	Args  []string
	Stdin []byte
}

func (c Cmd) String() string {
	return strings.TrimSpace(c.Name + " " + strings.Join(c.Args, " "))
}

// CmdRunner runs commands inside a network namespace. Unit tests use a recording fake; the real
// one is NetnsRunner. A program that cannot be found must give an error that wraps
// exec.ErrNotFound.
type CmdRunner interface {
	Run(ctx context.Context, c Cmd) (stdout []byte, err error)
}

// NetnsRunner runs commands in a namespace by starting them from an OS thread switched into
// it (the child inherits the thread's namespace), avoiding an extra nsenter process.
type NetnsRunner struct{}

// Run implements CmdRunner.
func (NetnsRunner) Run(ctx context.Context, c Cmd) ([]byte, error) {
	path, err := exec.LookPath(c.Name)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", c.Name, err)
	}
	cmd := exec.CommandContext(ctx, path, c.Args...)
	cmd.Stdin = bytes.NewReader(c.Stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Only the fork needs the namespace; waiting can happen anywhere.
	if err := inNetns(c.Netns, cmd.Start); err != nil {
		if cmd.Process != nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		return nil, fmt.Errorf("start %s in netns %q: %w", c, c.Netns, err)
	}
	if err := cmd.Wait(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s in netns %q: %w: %s", c, c.Netns, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}
