package netintercept

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

const (
	// ChainPrefix marks every chain smr-cri owns; nothing else in a namespace may use it.
	ChainPrefix = "SMR_"
	// ChainPrerouting is the owned chain that PREROUTING jumps to.
	ChainPrerouting = ChainPrefix + "PREROUTING"

	natTable = "nat"
)

// Rule is one rule in iptables-save's canonical form: the chain it is appended to and its
// match and target arguments, spelled exactly as iptables-save prints them, so that desired
// rules compare equal to saved ones.
type Rule struct {
	Chain string
	Args  []string
}

// String renders the rule as iptables-save prints it ("-A CHAIN args...").
func (r Rule) String() string {
	return "-A " + r.Chain + " " + strings.Join(r.Args, " ")
}

// Ruleset is the data a Spec turns into: owned chains, the jumps into them from built-in chains,
// and the rules of the owned chains, all in one table.
type Ruleset struct {
	Table  string
	Chains []string // owned chains, in declaration order
	Jumps  []Rule   // one per owned entry point, placed first in a built-in chain
	Rules  []Rule   // the owned chains' rules, in order
}

// Build turns a Spec into rules as data. It does no I/O.
func Build(s Spec) (Ruleset, error) {
	if err := s.Validate(); err != nil {
		return Ruleset{}, err
	}
	rs := Ruleset{
		Table:  natTable,
		Chains: []string{ChainPrerouting},
		Jumps:  []Rule{{Chain: "PREROUTING", Args: []string{"-p", "tcp", "-j", ChainPrerouting}}},
	}
	add := func(args ...string) { rs.Rules = append(rs.Rules, Rule{Chain: ChainPrerouting, Args: args}) }
	if s.Mark != 0 {
		m := fmt.Sprintf("0x%x/0x%x", s.Mark, s.Mark)
		add("-m", "mark", "--mark", m, "-j", "RETURN")
	}
	for _, a := range s.ProbeSources {
		add("-s", a.Unmap().String()+"/32", "-j", "RETURN")
	}
	// Sorted, so that the same set of ports always renders the same rules.
	for _, p := range sorted(s.ExcludePorts) {
		add("-p", "tcp", "-m", "tcp", "--dport", fmt.Sprint(p), "-j", "RETURN")
	}
	for _, p := range sorted(s.ServicePorts) {
		add("-p", "tcp", "-m", "tcp", "--dport", fmt.Sprint(p), "-j", "REDIRECT", "--to-ports", fmt.Sprint(s.ListenerPort))
	}
	return rs, nil
}

// sorted returns a sorted copy of s.
func sorted[T cmp.Ordered](s []T) []T {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// Lines are the rules as iptables-save prints them: the jumps, then the owned chains' rules.
func (rs Ruleset) Lines() []string {
	return append(ruleStrings(rs.Jumps), ruleStrings(rs.Rules)...)
}

// Render is the iptables-restore --noflush transaction that installs rs in a namespace that has
// none of our rules yet.
func (rs Ruleset) Render() string {
	script, _ := planApply(rs, &tableState{})
	return script
}

// planApply returns the single iptables-restore --noflush transaction that turns cur (the
// table as saved now) into one holding exactly rs, or changed=false when it already does.
func planApply(rs Ruleset, cur *tableState) (script string, changed bool) {
	owned := cur.owned()
	if slices.Equal(owned.chains, sorted(rs.Chains)) &&
		slices.Equal(owned.rules, ruleStrings(rs.Rules)) &&
		slices.Equal(owned.jumps, ruleStrings(rs.Jumps)) {
		return "", false
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", rs.Table)
	// Declaring a chain in a --noflush restore creates it, or flushes it if it exists.
	for _, c := range rs.Chains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	// Stale owned chains are flushed too, so that nothing references them when deleted below.
	stale := staleChains(owned.chains, rs.Chains)
	for _, c := range stale {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	// Every existing jump goes, however many there are, and exactly one per entry point is put
	// back first in its chain: the result never depends on what was there before.
	for _, j := range owned.jumps {
		fmt.Fprintf(&b, "-D%s\n", strings.TrimPrefix(j, "-A"))
	}
	for _, j := range rs.Jumps {
		fmt.Fprintf(&b, "-I %s 1 %s\n", j.Chain, strings.Join(j.Args, " "))
	}
	for _, r := range rs.Rules {
		fmt.Fprintln(&b, r.String())
	}
	for _, c := range stale {
		fmt.Fprintf(&b, "-X %s\n", c)
	}
	b.WriteString("COMMIT\n")
	return b.String(), true
}

// planCleanup returns the transaction that removes every jump to an owned chain and every owned
// chain from cur, or changed=false when there is nothing of ours.
func planCleanup(table string, cur *tableState) (script string, changed bool) {
	owned := cur.owned()
	if len(owned.chains) == 0 && len(owned.jumps) == 0 {
		return "", false
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", table)
	for _, j := range owned.jumps {
		fmt.Fprintf(&b, "-D%s\n", strings.TrimPrefix(j, "-A"))
	}
	// Flush all before deleting any: owned chains may jump to each other.
	for _, c := range owned.chains {
		fmt.Fprintf(&b, "-F %s\n", c)
	}
	for _, c := range owned.chains {
		fmt.Fprintf(&b, "-X %s\n", c)
	}
	b.WriteString("COMMIT\n")
	return b.String(), true
}

func ruleStrings(rs []Rule) []string {
	out := make([]string, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.String())
	}
	return out
}

func staleChains(have, want []string) []string {
	var out []string
	for _, c := range have {
		if !slices.Contains(want, c) {
			out = append(out, c)
		}
	}
	return out
}
