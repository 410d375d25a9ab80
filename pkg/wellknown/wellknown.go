// Package wellknown holds the names flashpv shares with Kubernetes and with
// its other binaries: the CSI driver name, the topology key and the
// StorageClass parameters the driver owns. It imports nothing, so any
// program can use it without pulling in the driver.
package wellknown

const (
	// DriverName is the CSI driver name, also the CSIDriver object's name.
	DriverName = "flashpv.dev"
	// TopologyKey carries the node name in volume and node topology.
	TopologyKey = "flashpv.dev/node"
	// ParamPool is the StorageClass parameter that selects a pool.
	ParamPool = "pool"
)
