// Package rediscmd is smr-cri's one Redis command table: how every Redis 7
// command and subcommand is treated so that replicas stay equal (served
// locally, ordered as is, rewritten at the origin, ordered only with
// deterministic arguments, or refused), which commands change or end the
// connection's state, and the origin rewrites themselves.
//
// The framer (replication/framing) classifies requests with Lookup and
// Check, the server rewrites with Rewrite just before proposing, and the
// pipeline and divergence work read the connection flags from the same
// table. The table is checked against COMMAND INFO of a real redis-server
// (rediscmd_integration_test.go) and rendered into replication/CONTRACT.md.
// A command the table does not know (a newer Redis, a module) is refused.
package rediscmd

import (
	"errors"
	"fmt"
	"strings"
	"sync"
)

// Treatment says what smr-cri does with a command.
type Treatment uint8

// Treatments.
const (
	// Unknown: not in the table; refused by default.
	Unknown Treatment = iota
	// Local: changes no replicated state; served by the replica holding the
	// client connection after a ReadIndex (its reply may differ between
	// replicas, as between two calls on one server: TIME, RANDOMKEY, INFO).
	Local
	// Ordered: ordered through the log and sent to every replica as is.
	Ordered
	// Rewritten: ordered after the origin rewrote it into a deterministic
	// equivalent (Rewrite); Note says how.
	Rewritten
	// Restricted: ordered as is only with arguments (or a pod opt-in) that
	// make it deterministic, refused otherwise; Note says which.
	Restricted
	// Refused: never sent; the client gets -ERR smr-cri: <COMMAND>: <why>.
	Refused
)

func (t Treatment) String() string {
	switch t {
	case Local:
		return "local"
	case Ordered:
		return "ordered"
	case Rewritten:
		return "rewritten"
	case Restricted:
		return "restricted"
	case Refused:
		return "refused"
	}
	return "unknown"
}

// Flags are facts about a command that other parts need.
type Flags uint16

// Flags.
const (
	// ConnState: changes the state of the connection (database, user,
	// protocol, transaction, name ...), which each replicated session keeps.
	ConnState Flags = 1 << iota
	// EndsConn: the app closes the connection after replying (QUIT).
	EndsConn
	// ResetsConn: returns the connection to its initial state (RESET).
	ResetsConn
	// Blocking: may wait for other clients (refused: it would stall the
	// group's serial executor).
	Blocking
	// Script: runs or manages Lua scripts or functions; refused unless the
	// pod allows scripts (AllowScripts).
	Script
	// Expiry: can set a key's expiry; refused unless the pod allows expiry
	// (AllowExpiry); the expiry is then made absolute at the origin.
	Expiry
	// Args: the treatment depends on the arguments (Check reads them).
	Args
	// ReadsOnly: once accepted, a Restricted command that only reads, so it
	// is served locally like Local ones (EVAL_RO, XREAD without BLOCK).
	ReadsOnly
)

// Allow is what a pod opted in to (annotation smr.io/redis-allow).
type Allow uint8

// Opt-ins.
const (
	// AllowScripts: EVAL, FCALL, SCRIPT LOAD, FUNCTION LOAD ...; the pod
	// declares that its scripts and functions are deterministic (no TIME,
	// no random commands, no math.random-driven writes).
	AllowScripts Allow = 1 << iota
	// AllowExpiry: key expiries (SET EX, EXPIRE, SETEX, GETEX EX, RESTORE
	// with a TTL ...), rewritten to absolute deadlines at the origin. A
	// write to a key close to its deadline can still end differently on a
	// replica that applies it later (see CONTRACT.md, Expiry).
	AllowExpiry
)

// ParseAllow parses "scripts,expiry" (empty: nothing).
func ParseAllow(s string) (Allow, error) {
	var a Allow
	for _, w := range strings.Split(s, ",") {
		switch strings.TrimSpace(w) {
		case "":
		case "scripts":
			a |= AllowScripts
		case "expiry":
			a |= AllowExpiry
		default:
			return 0, fmt.Errorf("unknown value %q (want scripts, expiry or both, comma-separated)", strings.TrimSpace(w))
		}
	}
	return a, nil
}

// Command is one row of the table.
type Command struct {
	// Name is upper case; a subcommand is "CONTAINER|SUB" ("CLIENT|KILL").
	Name      string
	display   string // "CLIENT KILL"
	Treatment Treatment
	Flags     Flags
	// Note: how it is rewritten, which arguments are allowed, why it is
	// refused or served locally.
	Note string
	// check, for Args commands, refuses nondeterministic argument shapes.
	check func(args [][]byte, allow Allow) error
	// rewrite returns the deterministic equivalent (nil: unchanged).
	rewrite func(args [][]byte, nowMs int64) [][]byte
	// plainUpTo: requests with at most this many arguments (name included)
	// carry no option check or rewrite looks at ("SET k v").
	plainUpTo int
}

// Local reports whether an accepted request of this command is served by
// the replica holding the connection instead of being ordered.
func (c *Command) Local() bool { return c.Treatment == Local || c.Has(ReadsOnly) }

// Has reports whether c has every flag in f.
func (c Command) Has(f Flags) bool { return c.Flags&f == f }

// ErrRefused wraps every refusal; its text is the reply after "smr-cri: ".
var ErrRefused = errors.New("refused")

// refusal is a refusal whose message names the command and why.
type refusal struct{ cmd, why string }

func (r *refusal) Error() string { return r.cmd + ": " + r.why }
func (r *refusal) Unwrap() error { return ErrRefused }

func refuse(cmd, why string) error { return &refusal{cmd: cmd, why: why} }

// table maps Name to its row; a container's subcommands are rows of their
// own ("CLIENT|KILL").
var table = map[string]*Command{}

// containers are the commands whose first argument is a subcommand.
var containers = map[string]bool{}

// Lookup returns the row of command name (any case) with its first argument
// sub (used only for container commands such as CLIENT or CONFIG). ok is
// false for a command, or a subcommand, the table does not know; the row
// returned then has Treatment Unknown, which Check refuses. The row is a
// copy: callers cannot change the table.
func Lookup(name, sub []byte) (c Command, ok bool) {
	var buf [32]byte
	n := upper(buf[:0], name)
	if containers[string(n)] && sub != nil {
		n = append(n, '|')
		n = upper(n, sub)
	}
	if c, ok := table[string(n)]; ok {
		return *c, true
	}
	key := string(n)
	return Command{Name: key, display: strings.ReplaceAll(key, "|", " "), Treatment: Unknown}, false
}

func upper(dst, s []byte) []byte {
	for _, c := range s {
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// LookupDisplay returns the row of a request's display name as the framer
// names it (framing.Request.Op: "SET", "CLIENT SETNAME").
func LookupDisplay(op string) (Command, bool) {
	c, ok := byDisplay()[op]
	return c, ok
}

// byDisplay indexes the table by display name, built once on first use
// (the table is filled by init).
var byDisplay = sync.OnceValue(func() map[string]Command {
	m := make(map[string]Command, len(table))
	for _, c := range table {
		m[c.display] = *c
	}
	return m
})

// Commands returns every row, containers' subcommands included, sorted by name.
func Commands() []Command {
	out := make([]Command, 0, len(table))
	for _, c := range table {
		out = append(out, *c)
	}
	sortCommands(out)
	return out
}

// DisplayName is the name as a client types it: "CLIENT KILL".
func (c Command) DisplayName() string { return c.display }

// Check decides whether the request args (args[0] is the command name) may
// be ordered: nil, or an error wrapping ErrRefused that names the command and
// why. Unknown commands are refused.
func (c *Command) Check(args [][]byte, allow Allow) error {
	name := c.DisplayName()
	switch c.Treatment {
	case Unknown:
		return refuse(name, "not in smr-cri's command table (a newer Redis or a module command), refused so replicas cannot diverge")
	case Refused:
		return refuse(name, c.Note)
	}
	if c.Has(Script) && allow&AllowScripts == 0 {
		return refuse(name, "scripts and functions may call TIME or random commands and run differently on each replica; a pod whose scripts are deterministic opts in with smr.io/redis-allow: scripts")
	}
	if c.check != nil {
		return c.check(args, allow)
	}
	return nil
}

// NeedsArgs reports whether Check or Rewrite look at the arguments of a
// request of n arguments (the name included), so the framer splits only
// those (a plain "SET k v" is not split).
func (c *Command) NeedsArgs(n int) bool {
	return (c.check != nil || c.rewrite != nil) && n > c.plainUpTo
}

// Rewrite returns the deterministic equivalent of args stamped with the
// origin's clock (Unix milliseconds), or nil when args are fine as they are.
// Call it after Check accepted args.
func (c *Command) Rewrite(args [][]byte, nowMs int64) [][]byte {
	if c.rewrite == nil {
		return nil
	}
	return c.rewrite(args, nowMs)
}

func add(name string, t Treatment, f Flags, note string) *Command {
	c := &Command{Name: name, display: strings.ReplaceAll(name, "|", " "), Treatment: t, Flags: f, Note: note}
	if i := strings.IndexByte(name, '|'); i > 0 {
		containers[name[:i]] = true
	}
	table[name] = c
	return c
}

// group adds commands that share treatment, flags and note.
func group(t Treatment, f Flags, note string, names ...string) {
	for _, n := range names {
		add(n, t, f, note)
	}
}
