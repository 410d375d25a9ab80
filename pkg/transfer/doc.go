// Package transfer moves a snapshot's or a volume's data from the node
// plugin that holds it to the node plugin of another node, which writes it
// into a new volume. It is flashpv's one network-facing data path, so every
// request is authenticated twice: the connection is mutual TLS 1.3 between
// node certificates that the cluster controller issued (package auth), and
// the request carries a capability the controller signed for exactly this
// copy (source, source node, target node, expiry), checked by the source
// before it reads a byte. The data itself is the sparse, segment-verified
// stream of package stream, and the target resumes at the last segment it
// verified and synced; or, for a quota pool's directory, the file tree of
// package tree, verified as a whole and started over when cut short.
//
// Subpackages: auth (keys, certificates, capabilities, replay), stream
// (the block wire format), tree (the file tree wire format), broker (the
// controller's HTTP API that hands out certificates and capabilities).
package transfer
