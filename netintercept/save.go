package netintercept

import (
	"slices"
	"strings"
)

// tableState is one table of iptables-save output.
type tableState struct {
	exists   bool
	policies map[string]string // built-in chain -> policy
	chains   []string          // user-defined chains, as declared
	rules    []string          // "-A ..." lines, as printed
}

// ownedState is the part of a table that smr-cri owns.
type ownedState struct {
	chains []string // owned chains, sorted
	rules  []string // rules appended to owned chains, in saved order
	jumps  []string // rules in other chains that jump or go to an owned chain
}

// parseSave splits iptables-save output into tables. Comments and counters are ignored.
func parseSave(text string) map[string]*tableState {
	tables := map[string]*tableState{}
	var cur *tableState
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			cur = &tableState{exists: true, policies: map[string]string{}}
			tables[line[1:]] = cur
		case cur == nil:
		case line == "COMMIT":
			cur = nil
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			if len(f) < 2 {
				continue
			}
			if f[1] == "-" {
				cur.chains = append(cur.chains, f[0])
			} else {
				cur.policies[f[0]] = f[1]
			}
		case strings.HasPrefix(line, "-A "):
			cur.rules = append(cur.rules, line)
		}
	}
	return tables
}

// table returns the named table, or an empty non-existing one.
func table(tables map[string]*tableState, name string) *tableState {
	if t, ok := tables[name]; ok {
		return t
	}
	return &tableState{}
}

func (t *tableState) owned() ownedState {
	var o ownedState
	for _, c := range t.chains {
		if strings.HasPrefix(c, ChainPrefix) {
			o.chains = append(o.chains, c)
		}
	}
	slices.Sort(o.chains)
	for _, r := range t.rules {
		f := strings.Fields(r)
		if len(f) < 2 {
			continue
		}
		if strings.HasPrefix(f[1], ChainPrefix) {
			o.rules = append(o.rules, r)
			continue
		}
		for i := 2; i+1 < len(f); i++ {
			if (f[i] == "-j" || f[i] == "-g") && strings.HasPrefix(f[i+1], ChainPrefix) {
				o.jumps = append(o.jumps, r)
				break
			}
		}
	}
	return o
}

// withoutOwned is the table as it would be with everything of ours removed.
func (t *tableState) withoutOwned() *tableState {
	o := t.owned()
	out := &tableState{exists: t.exists, policies: t.policies}
	for _, c := range t.chains {
		if !slices.Contains(o.chains, c) {
			out.chains = append(out.chains, c)
		}
	}
	for _, r := range t.rules {
		if !slices.Contains(o.rules, r) && !slices.Contains(o.jumps, r) {
			out.rules = append(out.rules, r)
		}
	}
	return out
}

// content counts what a table holds beyond empty built-in chains: rules and user chains.
func (t *tableState) content() int {
	return len(t.rules) + len(t.chains)
}

// pristine reports whether the table exists and holds nothing: no rules, no user chains, and
// every built-in chain accepting. Such a table behaves as if it did not exist.
func (t *tableState) pristine() bool {
	if !t.exists || t.content() > 0 {
		return false
	}
	for _, p := range t.policies {
		if p != "ACCEPT" {
			return false
		}
	}
	return true
}

// saveContent counts rules and user chains over all tables of a save output.
func saveContent(text string) int {
	n := 0
	for _, t := range parseSave(text) {
		n += t.content()
	}
	return n
}
