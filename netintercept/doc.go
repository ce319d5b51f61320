// Package netintercept redirects a pod's inbound service traffic, inside the pod's own network
// namespace, to smr-cri's listener in that same namespace, and gives the rest of smr-cri safe
// ways to open listeners, dial, and recover the original destination inside a pod netns.
//
// It is the only package in smr-cri that runs iptables.
//
// # Rules
//
// Build turns a Spec into rules as data (a Ruleset) in chains owned by smr-cri (prefix SMR_) in
// the nat table. One jump, "-A PREROUTING -p tcp -j SMR_PREROUTING", is the only thing placed in
// a built-in chain. SMR_PREROUTING holds, in this order:
//
//  1. "-m mark --mark M/M -j RETURN" when Spec.Mark is set: traffic already handled by smr-cri
//     (or marked by anything that cooperates with it) is never redirected.
//  2. "-s <node addr>/32 -j RETURN" for each Spec.ProbeSources address: kubelet runs liveness
//     and readiness probes from the node's own address, so those connections reach the
//     container directly and probe the real app, not smr-cri.
//  3. "-p tcp -m tcp --dport P -j RETURN" for each Spec.ExcludePorts port (smr-cri's raft port,
//     metrics, ...). Only service ports are redirected anyway; the explicit RETURN documents it
//     and keeps it true if later rules widen what is redirected.
//  4. "-p tcp -m tcp --dport S -j REDIRECT --to-ports L" for each service port S.
//
// What is not redirected, and why:
//   - Traffic from inside the pod (to 127.0.0.1, or to the pod's own address): the OUTPUT chain
//     is never touched, and a locally generated connection's NAT decision is taken in OUTPUT;
//     when its packets loop back through PREROUTING, conntrack already knows the connection and
//     the nat table is not consulted again. This is how replicas reach their own app.
//   - smr-cri's own sockets inside the pod netns (DialInNetns): locally generated, as above.
//   - The raft port and other excluded ports, marked traffic, and probes from the node address.
//
// Rules are IPv4 (iptables) only; pod networks in this project are IPv4.
//
// # Applying
//
// Interceptor.Apply reads the namespace's current rules (iptables-save of the detected backend),
// compares our chains and jump with the desired ones and, when they differ, replaces them in a
// single "iptables-restore --noflush" transaction: declaring a chain flushes it, the rules refill
// it, and every existing jump is deleted before exactly one is inserted. A failing restore
// changes nothing. Applying the same Spec again runs no restore at all. Calls on one Interceptor
// are serialized; two processes applying at the same instant could leave a second, harmless
// jump, which the next Apply removes.
//
// Interceptor.Cleanup deletes the jumps and our chains in one transaction. With the nf_tables
// backend, a nat table left with nothing but empty built-in chains is then deleted as well
// (guarded by the ruleset generation, so a concurrent change by anyone else wins), so
// iptables-save prints exactly what it printed before Apply. With the legacy backend a table,
// once instantiated in a namespace, cannot be removed; it stays empty.
//
// The backend (nf_tables or legacy) is the one whose iptables-save shows rules or chains of its
// own in the namespace; when neither does, nf_tables is preferred.
package netintercept
